// Small helpers to build the DOM from server data without ever parsing it as HTML.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Replace `el`'s children, keeping keyboard focus on the element with the same data-focus-key
// (a live update must not throw a keyboard user out of what they were on).
export function replaceChildren(el, ...children) {
  const focused = document.activeElement;
  const key = focused && el.contains(focused) ? focused.dataset.focusKey : undefined;
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  if (key) el.querySelector(`[data-focus-key="${CSS.escape(key)}"]`)?.focus();
}

export function formatBytes(bytes) {
  const units = ['bytes', 'KB', 'MB', 'GB', 'TB'];
  let value = Number(bytes) || 0;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return unit === 0 ? `${value} bytes` : `${value.toFixed(1)} ${units[unit]}`;
}

export function formatDuration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, '0');
  return hours ? `${hours}:${String(minutes).padStart(2, '0')}:${rest}` : `${minutes}:${rest}`;
}

// A server's message next to the form field it is about (it names the field), else under the
// form. `fields` maps the name the server uses to the field's element id.
export function showError(form, fields, message) {
  clearErrors(form);
  const lowered = message.toLowerCase();
  const match = Object.keys(fields)
    .sort((a, b) => b.length - a.length)
    .find((name) => lowered.includes(name.toLowerCase()));
  const target = match ? document.getElementById(`${fields[match]}-error`) : form.querySelector('.form-error');
  target.textContent = message;
  target.hidden = false;
  if (match) {
    const input = document.getElementById(fields[match]);
    input.setAttribute('aria-invalid', 'true');
    input.focus();
  }
}

export function clearErrors(form) {
  for (const el of form.querySelectorAll('.field-error, .form-error')) {
    el.hidden = true;
    el.textContent = '';
  }
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
}

// Every form's submission: the page handles it (no navigation), earlier messages go, the submit
// button is disabled while `work(form)` runs (no second submission meanwhile), and a failure's
// message is shown by the field it names (`fields`, as showError), or handed to `onError` for
// forms whose messages live elsewhere (a session card's line); onError('') clears it.
export function submitting(form, work, { fields = {}, onError = null } = {}) {
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(form);
    onError?.('');
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      await work(form);
    } catch (error) {
      if (onError) onError(error.message);
      else showError(form, fields, error.message);
    } finally {
      button.disabled = false;
    }
  });
}
