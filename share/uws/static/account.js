// The user's tokens: make an API token with chosen scopes (its key shown once, to copy), list
// them all (login tokens too: this browser's is marked), revoke one.
import { api } from './api.js';
import { h, replaceChildren, submitting } from './dom.js';

const list = document.getElementById('tokens');
const form = document.getElementById('token-form');
const fields = { scope: 'token-scopes', note: 'token-note', expires_in: 'token-days' };
const DAY = 86400;

function when(value) {
  return value ? new Date(value).toLocaleString() : 'never';
}

function row(token) {
  const scopes = token.scopes === null ? 'all of yours (a sign-in)' : token.scopes.join(', ');
  const label = token.note || `token ${token.id}`;
  const revoke = token.current
    ? h('span', { class: 'muted' }, 'This browser (sign out to end it)')
    : h('button', {
        type: 'button',
        dataset: { focusKey: `revoke-${token.id}` },
        'aria-label': `Revoke ${label}`,
        onclick: async (e) => {
          e.target.disabled = true;
          try {
            await api('DELETE', `/tokens/api/${token.id}/`);
            await load();
            list.querySelector('button')?.focus();
          } catch (error) {
            e.target.disabled = false;
            const message = document.getElementById('tokens-error');
            message.textContent = error.message;
            message.hidden = false;
          }
        },
      }, 'Revoke');
  return h(
    'tr',
    { id: `token-${token.id}` },
    h('td', {}, label),
    h('td', {}, scopes),
    h('td', {}, when(token.datetime_created)),
    h('td', {}, when(token.expires_at)),
    h('td', {}, revoke),
  );
}

async function load() {
  const tokens = (await api('GET', '/tokens/api/')).data.tokens;
  const head = ['Note', 'Scopes', 'Made', 'Expires', ''].map((t) => h('th', { scope: 'col' }, t || h('span', { class: 'visually-hidden' }, 'Action')));
  replaceChildren(
    list,
    h('p', { class: 'form-error', id: 'tokens-error', role: 'alert', hidden: true }),
    h('div', { class: 'scroll' }, h('table', {}, h('thead', {}, h('tr', {}, head)), h('tbody', {}, tokens.map(row)))),
  );
}

submitting(
  form,
  async () => {
    const body = { scopes: [...form.querySelectorAll('input[name=scopes]:checked')].map((i) => i.value) };
    if (form.elements.note.value) body.note = form.elements.note.value;
    const days = form.elements.days.value;
    if (days !== '') body.expires_in = Number.isInteger(Number(days)) ? Number(days) * DAY : days;
    const token = (await api('POST', '/tokens/api/', body)).data.token;
    document.getElementById('new-token-id').textContent = token.note || String(token.id);
    const key = document.getElementById('new-token-key');
    key.value = token.token;
    document.getElementById('copy-status').textContent = '';
    document.getElementById('new-token').hidden = false;
    form.reset();
    key.focus();
    key.select();
    await load();
  },
  { fields },
);

document.getElementById('copy-token').addEventListener('click', async () => {
  const key = document.getElementById('new-token-key');
  const status = document.getElementById('copy-status');
  try {
    await navigator.clipboard.writeText(key.value);
    status.textContent = 'Copied.';
  } catch {
    key.select();
    status.textContent = 'Copying is not allowed here: the key is selected, copy it with the keyboard.';
  }
});

load().catch((error) => replaceChildren(list, h('p', { class: 'form-error' }, error.message)));
