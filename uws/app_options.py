"""UWSApp's own options, declared here so uws/app.py holds only the assembly: `UWSAppOptions`, the
server's options (listen address, database, login, storage, sessions, limits), and
`MovedOptions`, the deprecated names of options now on the class they configure. A new UWSApp
option goes in UWSAppOptions. Both are plain HasTraits, not Configurable: traitlets names only
Configurable classes, so every option is configured as `c.UWSApp.<name>` and `uws generate-config`
lists it, with its full help, under UWSApp."""

from __future__ import annotations

import os
from typing import Any

from traitlets import Bool, Dict, Enum, Float, HasTraits, Integer, List, Set, TraitError, Unicode, default
from traitlets import validate as validate_trait

from .config_json import default_job_types, default_parameters, default_resources
from .configuration import moved


class UWSAppOptions(HasTraits):
    """The server's options (each one's help is what `uws generate-config` prints)."""

    config_file = Unicode(
        "",
        config=True,
        help="""Configuration file: a traitlets Python file (uws_config.py) or an existing
        deployment's config.json in the original server's format. Empty: embedded defaults.""",
    )
    ip = Unicode("127.0.0.1", config=True, help="Address to listen on; 0.0.0.0 for every interface.")
    port = Integer(8000, config=True, help="Port to listen on.")
    debug = Bool(False, config=True, help="Development mode: more logging.")
    loop_stall_seconds = Float(
        0,
        config=True,
        help="""Log a warning, with the stack of the blocking code, whenever the event loop is
        blocked for this many seconds or more (e.g. 0.05). For finding what delays requests and
        pushed events; 0: off.""",
    )
    data_dir = Unicode(
        "",
        config=True,
        help="""Directory for the embedded defaults: the SQLite database and the workspaces root
        when they are not configured. Default: ./uws-data.""",
    )

    @default("data_dir")
    def _data_dir(self) -> str:
        return os.path.abspath("uws-data")

    db_url = Unicode(
        "",
        config=True,
        help="""SQLAlchemy database URL. SQLite (the default, sqlite:///<data_dir>/uws.sqlite)
        suits one server; use postgresql://user@host/db in production.""",
    )
    public_url = Unicode(
        "",
        config=True,
        help="""The URL browsers use to reach this server (scheme://host[:port]), e.g. behind a
        TLS proxy. Default: http://<ip>:<port>.""",
    )
    passthrough_url = Unicode(
        "",
        config=True,
        help="""Scheme and port of session links (scheme://host[:port]). With
        passthrough_mode 'origin', only its scheme and port are used (each session has its own
        host name under session_host); with 'path', it is connection_details.url_domain itself.
        Default: public_url.""",
    )
    passthrough_mode = Enum(
        ["origin", "path"],
        "origin",
        config=True,
        help="""How browsers reach sessions. 'origin' (the default): each session is served from
        a host name of its own, https://j<job id>-<random>.<session_host>/, so the browser keeps
        one session's pages from reading or driving any other; this needs a wildcard DNS record
        (and a wildcard TLS certificate) for *.<session_host> pointing at this server. 'path':
        every session under /passthrough/<job id>/ on the server's own origin, where a page in
        one session can act in every other session the same browser opens: only for
        single-user or fully trusted installations.""",
    )
    session_host = Unicode(
        "localhost",
        config=True,
        help="""The domain under which sessions get their host names (passthrough_mode
        'origin'), e.g. 'sessions.example.org' for https://j12-3f9c0a1b2d4e5f60.sessions.example.org/.
        Use a domain of its own where nothing else sets cookies, not the API's host or a parent
        of it. The default, 'localhost', suits development: browsers resolve *.localhost to this
        machine.""",
    )

    @validate_trait("session_host")
    def _check_session_host(self, proposal: Any) -> str:
        from .hostnames import session_domain_name

        value = session_domain_name(str(proposal["value"]))
        if value is None:
            raise TraitError(
                f"session_host must be a DNS name without scheme or port, not {proposal['value']!r}"
            )
        return value

    authenticator_class = Unicode(
        "",
        config=True,
        help="""How users log in (POST /tokens/): 'local' (API client token, OS accounts),
        'globus' (Globus Auth), 'psc', 'dev' (no client token; development only, also set by
        --dev), another entry point of the group uws.authenticators, or the import path of
        an Authenticator subclass. There is no default: the server does not start until a
        login method is named.""",
    )
    storage_class = Unicode(
        "local",
        config=True,
        help="""Where workspaces live: 'local', 'hubmap', another entry point of the group
        uws.storage, or the import path of a storage class.""",
    )
    storage_accounts_from = Unicode(
        "",
        config=True,
        help="""Which authentication method provides storage (OS) accounts: 'local', 'dev',
        'globus' or 'psc'. Default: the same as authenticator_class. Globus and PSC cannot
        provide accounts here, so workspace operations are then refused.""",
    )
    api_auth_key = Unicode("main_auth", config=True, help="Name of the login method in /status/.")
    storage_key = Unicode("main_storage", config=True, help="Name of the storage in /status/.")
    main_resource_key = Unicode(
        "main_resource",
        config=True,
        help="""The resource every session runs on; also the key looked up in each job type's
        environment_details.""",
    )
    resources = Dict(
        config=True,
        help="""Compute resources by key, each in the original config.json form: resource_type
        (LocalResource, SlurmAPIResource), passthrough_domain, parameter_mapping,
        connection_details.""",
    )

    @default("resources")
    def _resources(self) -> dict[str, Any]:
        return default_resources(self.main_resource_key)

    job_types = Dict(
        config=True,
        help="""Job types by id, in the original config.json form: {"name", "job_type",
        "environment_details": {<resource key>: {...}}}. Their order is the order of
        GET /job_types/.""",
    )

    @default("job_types")
    def _job_types(self) -> dict[str, Any]:
        return default_job_types(self.main_resource_key)

    parameters: List[Any] = List(
        config=True,
        help="""Resource options users may request when starting a session, served verbatim by
        GET /parameters/ and used to validate PUT /workspaces/<id>/start/.""",
    )

    @default("parameters")
    def _parameters(self) -> list[Any]:
        return default_parameters()

    user_authentication_methods = Dict(
        config=True, help="Every login method of an original config.json, for /status/ health."
    )
    storage_methods = Dict(config=True, help="Every storage of an original config.json, for /status/.")
    cors_allowed_origins = List(
        Unicode(),
        ["*"],
        config=True,
        help="""Origins allowed to call the API from a browser. '*' (the default) is safe
        because credentials travel in a header, never a cookie.""",
    )
    max_body_size = Integer(
        100 * 1024 * 1024,
        config=True,
        help="""Largest request body in bytes for uploads (PUT /workspaces/<id>/upload/); larger
        ones get 413. Every other request has max_json_body_size. An original deployment's
        DATA_UPLOAD_MAX_MEMORY_SIZE sets this.""",
    )
    max_json_body_size = Integer(
        1024 * 1024,
        config=True,
        help="""Largest JSON request body in bytes (every request but uploads, POST /tokens/
        included, which anyone may send); larger ones get 413 before they are read.""",
    )
    max_description_length = Integer(
        10_000,
        config=True,
        help="Most characters a workspace description may have (0: no limit); longer gets 400.",
    )
    max_details_bytes = Integer(
        64 * 1024,
        config=True,
        help="""Largest job_details of a session start, and workspace_details of a workspace
        (the files' content not counted: it goes to disk, not to the database), in bytes of
        JSON (0: no limit). They are stored and sent back in every listing; larger gets 400.""",
    )
    token_expiry_seconds = Integer(
        0, config=True, help="Seconds a login token stays valid; 0 means until logout."
    )
    admin_users = Set(
        Unicode(),
        set(),
        config=True,
        help="""Usernames that are admins: they may use the /admin/ endpoints (every user, job
        and quota) and give their API tokens the admin and metrics scopes. Admins can also be
        made with `uws user set-admin NAME` (kept in the database). A name in this set is an
        admin whatever the database says, and cannot be demoted there; removing it from the
        set (and restarting) takes its admin rights away, from every token it holds, unless
        `uws user set-admin` made it an admin too.""",
    )
    users_min_search_length = Integer(
        0, config=True, help="Minimum length of ?search= on GET /users/ (0 lists everyone)."
    )
    session_channel_url = Unicode(
        "",
        config=True,
        help="""ZeroMQ endpoint where session helpers reach the server. Default:
        ipc://<data_dir>-channel/sessions.sock (helpers on this machine). An ipc:// socket gets a
        directory of its own (made if missing, mode 0750, group session_group): nothing else may
        be in it. Use tcp://<address>:<port> when sessions run on other hosts (Slurm); the
        connection is then encrypted with CURVE (the server's key pair is kept in
        <data_dir>/session_channel.key). It must stay the same across restarts so running
        sessions reconnect. With several servers (high availability) only the leading one binds
        it; see session_channel_peers.""",
    )
    session_channel_peers = List(
        Unicode(),
        [],
        config=True,
        help="""Every session channel endpoint a session helper connects to: one per server that
        may lead, this one's included (e.g. ["tcp://uws1.example.org:7000",
        "tcp://uws2.example.org:7000"], with each server's session_channel_url binding its own,
        or "tcp://*:7000"). A helper connects to all of them, sends only to the one that is up
        (the leader), and says "hello" to a new leader as soon as it binds, so a standby that
        takes over re-attaches every running session within a second or two, without
        restarting any. All must be tcp:// (sharing <data_dir>/session_channel.key), or all
        ipc://. Empty (the default): helpers connect to session_channel_url alone, which is
        enough when both servers share one machine's ipc:// socket path, or one name that
        follows the leader.""",
    )
    session_group = Unicode(
        "",
        help="""OS group whose members may connect to the ipc:// session channel: the group of
        the accounts sessions run as (the one a SudoSpawner sudoers rule names, e.g. uwsusers).
        The server's account must be a member (or root). OS accounts the server creates
        (create_system_users) are added to it. Empty: the server's own group only, which suits
        the local spawner (sessions as the server's own account).""",
    ).tag(config=True)
    spawner_class = Unicode(
        "",
        config=True,
        help="""How sessions are started: 'local' (as the server's own user), 'sudo' (as the
        workspace owner's OS account, through sudo), 'slurm' (as Slurm batch jobs submitted with
        sbatch as the workspace owner; see SlurmSpawner), 'slurm_rest' (Slurm batch jobs
        submitted through slurmrestd's REST API; see SlurmRestSpawner), another entry point of
        the group uws.spawners, or an import path.
        Default: 'sudo' when users have their own OS accounts, else 'local'.""",
    )
    background_fs_threads = Integer(
        2,
        config=True,
        help="""Threads for slow file work in the background (share copies, workspace deletion),
        kept apart from the threads that serve creates, uploads, updates and rescans.""",
    )
    metrics_enabled = Bool(
        True,
        config=True,
        help="""Collect metrics and serve them at GET /metrics in Prometheus' text format. Off:
        nothing is counted and /metrics answers 404.""",
    )
    metrics_public = Bool(
        False,
        config=True,
        help="""Let anyone who can reach the server read GET /metrics, without a token. By
        default it needs an admin's token, or a token with the 'metrics' scope held by an admin
        (what a Prometheus server should be given). Turn this on only where the server's port
        is reachable from trusted machines alone: the metrics tell how busy the server is.""",
    )


class MovedOptions(HasTraits):
    """Deprecated names of options now on the class they configure (uws/configuration.py reads
    them into their new places, with a warning)."""

    head_timeout = Float(30.0, config=True, help=moved("head_timeout"))
    max_connections = Integer(10000, config=True, help=moved("max_connections"))
    trusted_proxies = List(Unicode(), [], config=True, help=moved("trusted_proxies"))
    max_websockets_per_user = Integer(100, config=True, help=moved("max_websockets_per_user"))
    proxy_connect_timeout = Float(5.0, config=True, help=moved("proxy_connect_timeout"))
    proxy_request_timeout = Float(3600.0, config=True, help=moved("proxy_request_timeout"))
    proxy_websocket_max_message_size = Integer(
        64 << 20, config=True, help=moved("proxy_websocket_max_message_size")
    )
    idle_timeout_seconds = Float(0, config=True, help=moved("idle_timeout_seconds"))
    idle_warning_seconds = Float(300, config=True, help=moved("idle_warning_seconds"))
    cull_interval_seconds = Float(30, config=True, help=moved("cull_interval_seconds"))
    stop_grace_seconds = Float(5.0, config=True, help=moved("stop_grace_seconds"))
    status_check_timeout = Float(5.0, config=True, help=moved("status_check_timeout"))
    build = Unicode("", config=True, help=moved("build"))
    max_concurrent_starts = Integer(20, config=True, help=moved("max_concurrent_starts"))
    max_running_jobs_per_user = Integer(10, config=True, help=moved("max_running_jobs_per_user"))
    heartbeat_seconds = Float(5.0, config=True, help=moved("heartbeat_seconds"))
    reconcile_seconds = Float(10.0, config=True, help=moved("reconcile_seconds"))
    lost_contact_seconds = Float(900.0, config=True, help=moved("lost_contact_seconds"))
