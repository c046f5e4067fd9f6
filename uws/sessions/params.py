"""Resource options: validation against the configured parameters (contract 2.5.1, exact
messages) and translation to a resource's own names."""

from __future__ import annotations

from typing import Any

from ..utils import python_type_name


def _bound_error(name: str, value: Any, kind: str, bound: Any) -> str | None:
    try:
        failed = value < bound if kind == "minimum" else value > bound
    except TypeError:
        return (
            f"{name}: Value '{value}' of type {python_type_name(value)} cannot be compared with "
            f"{kind} of {bound}."
        )
    if not failed:
        return None
    if kind == "minimum":
        return f"{name}: Value '{value}' not above minimum of {bound}."
    return f"{name}: Value '{value}' above maximum of {bound}."


def validate_resource_options(
    parameters: list[dict[str, Any]], options: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Return (the known options, every error), in the contract's order."""
    known = {p["variable_name"]: p for p in parameters if isinstance(p, dict) and "variable_name" in p}
    errors: list[str] = []
    for name, param in known.items():
        if (param.get("validation") or {}).get("required") and name not in options:
            errors.append(f"Missing required: {name}")
    valid: dict[str, Any] = {}
    for name, value in options.items():
        if name not in known:
            continue  # unknown keys are dropped silently
        rules = known[name].get("validation") or {}
        wanted = rules.get("type")
        if wanted and python_type_name(value) != wanted:
            errors.append(
                f"{name}: Value '{value}' of type {python_type_name(value)} does not match required "
                f"type {wanted}. Skipping further validation of parameter {name}."
            )
            continue
        ok = True
        for kind, key in (("minimum", "min"), ("maximum", "max")):
            bound = rules.get(key)
            if bound:  # a bound of 0 is ignored, as the original did
                error = _bound_error(name, value, kind, bound)
                if error:
                    errors.append(error)
                    ok = False
        if ok:
            valid[name] = value
    return valid, errors


def translate(options: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """Generic names to the resource's names; unmapped options are dropped."""
    return {mapping[k]: v for k, v in options.items() if k in mapping}


class DefaultValueError(ValueError):
    """A parameter's configured default_value does not pass its own validation."""


def with_defaults(
    parameters: list[dict[str, Any]], valid: dict[str, Any], preset: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The validated options plus a value for every option the request left out: the job
    type's own setting (`preset`) where it has one, else the parameter's `default_value`.
    Without this a session nobody gave a time limit would run (and reserve core hours) for
    nothing. A default that fails its own validation is a configuration error, not a reason
    to start the session without it."""
    merged = dict(valid)
    for name, value in (preset or {}).items():
        if name not in merged and value is not None:
            merged[name] = value
    missing = {
        p["variable_name"]: p["default_value"]
        for p in parameters
        if isinstance(p, dict)
        and "variable_name" in p
        and p["variable_name"] not in merged
        and p.get("default_value") is not None
    }
    defaults, errors = validate_resource_options(parameters, missing)
    errors = [e for e in errors if not e.startswith("Missing required: ")]
    if errors:
        raise DefaultValueError(f"Invalid parameter default_value: {errors!r}")
    return {**merged, **defaults}
