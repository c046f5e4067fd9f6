// For admins: every active session (stop any of them) and every user with their quota use.
import { api } from './api.js';
import { formatBytes, h, replaceChildren } from './dom.js';

const jobsBox = document.getElementById('admin-jobs');
const usersBox = document.getElementById('admin-users');
const error = document.getElementById('admin-error');
const ACTIVE = ['pending', 'running', 'stopping'];

function table(caption, head, rows) {
  return h(
    'div',
    { class: 'scroll' },
    h('table', {}, h('caption', { class: 'visually-hidden' }, caption), h('thead', {}, h('tr', {}, head.map((t) => h('th', { scope: 'col' }, t)))), h('tbody', {}, rows)),
  );
}

function stopButton(entry) {
  return h('button', {
    type: 'button',
    dataset: { focusKey: `admin-stop-${entry.job.id}` },
    'aria-label': `Stop session ${entry.job.id} of ${entry.user}`,
    onclick: async (e) => {
      e.target.disabled = true;
      error.hidden = true;
      try {
        await api('PUT', `/admin/jobs/${entry.job.id}/stop/`);
        await loadJobs();
      } catch (failure) {
        error.textContent = failure.message;
        error.hidden = false;
        e.target.disabled = false;
      }
    },
  }, 'Stop');
}

async function loadJobs() {
  const answers = await Promise.all(ACTIVE.map((status) => api('GET', `/admin/jobs/?status=${status}`)));
  const entries = answers.flatMap((a) => a.data.jobs).sort((a, b) => a.job.id - b.job.id);
  if (!entries.length) {
    replaceChildren(jobsBox, h('p', { class: 'muted' }, 'No active sessions.'));
    return;
  }
  const rows = entries.map((entry) =>
    h(
      'tr',
      { id: `admin-job-${entry.job.id}`, dataset: { status: entry.job.status } },
      h('td', {}, String(entry.job.id)),
      h('td', {}, entry.user),
      h('td', {}, entry.job.job_type),
      h('td', {}, entry.job.status),
      h('td', {}, entry.job.status === 'stopping' ? '' : stopButton(entry)),
    ),
  );
  replaceChildren(jobsBox, table('Active sessions', ['Session', 'User', 'Kind', 'Status', 'Action'], rows));
}

async function loadUsers() {
  const users = (await api('GET', '/admin/users/')).data.users;
  const rows = users.map((u) =>
    h(
      'tr',
      {},
      h('td', {}, u.username),
      h('td', {}, `${u.first_name} ${u.last_name}`.trim()),
      h('td', {}, [u.is_active ? 'active' : 'deactivated', u.is_admin ? ', admin' : '']),
      h('td', {}, formatBytes(u.quota.disk_bytes.used)),
      h('td', {}, `${Number(u.quota.core_hours.used).toFixed(2)}`),
      h('td', {}, String(u.running_sessions.length)),
    ),
  );
  replaceChildren(usersBox, table('Users', ['User', 'Name', 'State', 'Disk', 'Core hours', 'Active sessions'], rows));
}

function refresh() {
  Promise.all([loadJobs(), loadUsers()]).catch((failure) => {
    error.textContent = failure.message;
    error.hidden = false;
  });
}

// Events tell a user only of their own jobs, so the lists are read again every few seconds
// while the page is visible.
const REFRESH_MS = 5000;
refresh();
setInterval(() => {
  if (document.visibilityState === 'visible') refresh();
}, REFRESH_MS);
