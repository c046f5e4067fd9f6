// For admins: every active session (stop any of them) and every user with their quota use, and
// what /admin/users/ changes: deactivate or reactivate, make or unmake admin, set the quota
// maximums, revoke every token. Whatever takes something away asks first; a refusal shows in
// the row of the session or user it concerns.
import { api } from './api.js';
import { clearErrors, formatBytes, h, replaceChildren, submitting } from './dom.js';

const jobsBox = document.getElementById('admin-jobs');
const usersBox = document.getElementById('admin-users');
const error = document.getElementById('admin-error');
const status = document.getElementById('admin-status');
const me = document.getElementById('users').dataset.me;
const ACTIVE = ['pending', 'running', 'stopping'];
const GB = 1e9;

// The last refusal of an action, by row ('job-<id>', 'user-<id>'): kept across the refreshes.
const rowErrors = new Map();

function setRowError(key, message) {
  if (message) rowErrors.set(key, message);
  else rowErrors.delete(key);
  const el = document.getElementById(`${key}-error`);
  if (el) {
    el.textContent = message;
    el.hidden = !message;
  }
}

function rowError(key) {
  const message = rowErrors.get(key);
  return h('p', { class: 'field-error', id: `${key}-error`, role: 'alert', hidden: !message }, message);
}

function table(caption, head, rows) {
  return h(
    'div',
    { class: 'scroll' },
    h('table', {}, h('caption', { class: 'visually-hidden' }, caption), h('thead', {}, h('tr', {}, head.map((t) => h('th', { scope: 'col' }, t)))), h('tbody', {}, rows)),
  );
}

// A yes-or-no question in a modal dialog; focus goes back to the button that asked (by its
// focus key: a refresh may have replaced it meanwhile).
const focusByKey = (key) => document.querySelector(`[data-focus-key="${CSS.escape(key)}"]`)?.focus();
const confirmDialog = document.getElementById('confirm-dialog');
function confirmed(title, text, action) {
  const key = document.activeElement?.dataset.focusKey;
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = action;
  confirmDialog.returnValue = ''; // (Escape leaves the last answer in place)
  confirmDialog.showModal();
  return new Promise((resolve) => {
    confirmDialog.addEventListener(
      'close',
      () => {
        if (key) focusByKey(key);
        resolve(confirmDialog.returnValue === 'confirm');
      },
      { once: true },
    );
  });
}

// A button that performs `perform()`, after `ask` ([title, text, action]) is confirmed when
// given; `done` (else the server's message) goes to the status line, and the lists are read again.
function actionButton(row, focusKey, label, name, perform, { ask = null, done = null } = {}) {
  return h('button', {
    type: 'button',
    dataset: { focusKey },
    'aria-label': `${label} ${name}`,
    onclick: async (e) => {
      const button = e.currentTarget;
      if (ask && !(await confirmed(...ask))) return;
      button.disabled = true;
      setRowError(row, '');
      try {
        const answer = await perform();
        status.textContent = done ?? answer.message;
        await refresh();
      } catch (failure) {
        setRowError(row, failure.message);
        button.disabled = false;
      }
      // (the button lost focus while disabled: back to it, or to the one now in its place)
      if (document.activeElement === document.body) focusByKey(focusKey);
    },
  }, label);
}

async function loadJobs() {
  const answers = await Promise.all(ACTIVE.map((s) => api('GET', `/admin/jobs/?status=${s}`)));
  const entries = answers.flatMap((a) => a.data.jobs).sort((a, b) => a.job.id - b.job.id);
  if (!entries.length) {
    replaceChildren(jobsBox, h('p', { class: 'muted' }, 'No active sessions.'));
    return;
  }
  const rows = entries.map(({ job, user }) => {
    const row = `job-${job.id}`;
    const stop = actionButton(row, `admin-stop-${job.id}`, 'Stop', `session ${job.id} of ${user}`, () => api('PUT', `/admin/jobs/${job.id}/stop/`), {
      done: `Stopping session ${job.id}.`,
    });
    return h(
      'tr',
      { id: `admin-job-${job.id}`, dataset: { status: job.status } },
      h('td', {}, String(job.id)),
      h('td', {}, user),
      h('td', {}, job.job_type),
      h('td', {}, job.status),
      h('td', {}, job.status === 'stopping' ? '' : stop, rowError(row)),
    );
  });
  replaceChildren(jobsBox, table('Active sessions', ['Session', 'User', 'Kind', 'Status', 'Action'], rows));
}

const of = (used, maximum) => (maximum === null ? `${used} (no limit)` : `${used} of ${maximum}`);
const hours = (value) => Number(value).toFixed(2);

function userActions(u) {
  const row = `user-${u.id}`;
  const name = u.username;
  const path = `/admin/users/${encodeURIComponent(name)}/`;
  const change = (body) => () => api('PUT', path, body);
  const yourself = name === me ? ' You are this user: it signs you out too.' : '';
  const active = u.is_active
    ? actionButton(row, `active-${u.id}`, 'Deactivate', name, change({ is_active: false }), {
        ask: [`Deactivate ${name}?`, `They can no longer sign in or use the API; their pages and tokens stop working at once.${yourself}`, 'Deactivate'],
        done: `Deactivated ${name}.`,
      })
    : actionButton(row, `active-${u.id}`, 'Reactivate', name, change({ is_active: true }), { done: `Reactivated ${name}.` });
  const admin = u.is_admin
    ? actionButton(row, `admin-${u.id}`, 'Remove admin', name, change({ is_admin: false }), {
        ask: [`Remove ${name} as an administrator?`, 'They lose this page and the admin API from their next request on.', 'Remove admin'],
        done: `${name} is no longer an administrator.`,
      })
    : actionButton(row, `admin-${u.id}`, 'Make admin', name, change({ is_admin: true }), { done: `${name} is an administrator now.` });
  const quotas = h('button', { type: 'button', dataset: { focusKey: `quota-${u.id}` }, 'aria-label': `Quotas of ${name}`, onclick: () => openQuotas(u) }, 'Quotas…');
  const revoke = actionButton(row, `revoke-${u.id}`, 'Revoke tokens', name, () => api('DELETE', `${path}tokens/`), {
    ask: [`Revoke every token of ${name}?`, `Their API tokens and browser sign-ins end now: programs using them are refused until given a new token.${yourself}`, 'Revoke tokens'],
  });
  return [h('div', { class: 'actions' }, active, admin, quotas, revoke), rowError(row)];
}

async function loadUsers() {
  const users = (await api('GET', '/admin/users/')).data.users;
  const rows = users.map((u) =>
    h(
      'tr',
      { id: `admin-user-${u.username}` },
      h('td', {}, u.username),
      h('td', {}, `${u.first_name} ${u.last_name}`.trim()),
      h('td', { class: 'state' }, [u.is_active ? 'active' : 'deactivated', u.is_admin ? ', admin' : '']),
      h('td', { class: 'disk' }, of(formatBytes(u.quota.disk_bytes.used), u.quota.disk_bytes.maximum === null ? null : formatBytes(u.quota.disk_bytes.maximum))),
      h('td', { class: 'core-hours' }, of(hours(u.quota.core_hours.used), u.quota.core_hours.maximum === null ? null : hours(u.quota.core_hours.maximum))),
      h('td', {}, String(u.running_sessions.length)),
      h('td', {}, userActions(u)),
    ),
  );
  replaceChildren(usersBox, table('Users', ['User', 'Name', 'State', 'Disk', 'Core hours', 'Active sessions', 'Actions'], rows));
}

// The quota dialog: both maximums at once, prefilled with the current ones; empty is none. A
// value that is not a number goes to the server as typed, for its message by the field.
const quotaDialog = document.getElementById('quota-dialog');
const quotaForm = document.getElementById('quota-form');
const quotaFields = { max_disk_bytes: 'quota-disk', disk: 'quota-disk', max_core_hours: 'quota-hours', 'core hours': 'quota-hours' };
let quotaUser = null;

function openQuotas(u) {
  quotaUser = u;
  clearErrors(quotaForm);
  document.getElementById('quota-title').textContent = `Quotas of ${u.username}`;
  const disk = u.quota.disk_bytes.maximum;
  const coreHours = u.quota.core_hours.maximum;
  quotaForm.elements.disk.value = disk === null ? '' : String(disk / GB);
  quotaForm.elements.hours.value = coreHours === null ? '' : String(Number(coreHours));
  quotaDialog.showModal();
}

function maximum(text, scale) {
  const value = text.trim();
  if (value === '') return null;
  const n = Number(value);
  return Number.isFinite(n) ? n * scale : value;
}

submitting(
  quotaForm,
  async () => {
    const u = quotaUser;
    const body = { max_disk_bytes: maximum(quotaForm.elements.disk.value, GB), max_core_hours: maximum(quotaForm.elements.hours.value, 1) };
    if (typeof body.max_disk_bytes === 'number') body.max_disk_bytes = Math.round(body.max_disk_bytes);
    await api('PUT', `/admin/users/${encodeURIComponent(u.username)}/`, body);
    status.textContent = `Saved the quotas of ${u.username}.`;
    quotaDialog.close();
    await refresh();
  },
  { fields: quotaFields },
);
document.getElementById('quota-cancel').addEventListener('click', () => quotaDialog.close());
quotaDialog.addEventListener('close', () => {
  if (quotaUser) focusByKey(`quota-${quotaUser.id}`);
});

async function refresh() {
  try {
    await Promise.all([loadJobs(), loadUsers()]);
    error.hidden = true;
  } catch (failure) {
    error.textContent = failure.message;
    error.hidden = false;
  }
}

// Events tell a user only of their own jobs, so the lists are read again every few seconds
// while the page is visible.
const REFRESH_MS = 5000;
refresh();
setInterval(() => {
  if (document.visibilityState === 'visible') refresh();
}, REFRESH_MS);
