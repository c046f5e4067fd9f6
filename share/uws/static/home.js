// The home page: quota, a new workspace, and every workspace with its active sessions.
import { api, prefix } from './api.js';
import { formatBytes, h, replaceChildren, submitting } from './dom.js';
import { startEvents } from './events.js';
import { ACTIVE, Store, renderCards, startCountdown } from './sessions.js';
import { loadInbox } from './shares.js';

const list = document.getElementById('workspaces');
const quota = document.getElementById('quota');

function bar(label, used, maximum, format) {
  if (maximum === null || maximum === undefined) {
    return h('p', {}, `${label}: ${format(used)} used (no limit)`);
  }
  const share = maximum > 0 ? Math.min(100, (100 * used) / maximum) : 100;
  const id = `quota-${label.toLowerCase().replace(/\W+/g, '-')}`;
  return h(
    'div',
    { class: 'quota' },
    h('label', { for: id }, `${label}: ${format(used)} of ${format(maximum)} (${share.toFixed(0)}%)`),
    h('meter', { id, min: 0, max: maximum, low: 0.8 * maximum, high: 0.9 * maximum, optimum: 0, value: used }),
  );
}

async function loadQuota() {
  try {
    const q = (await api('GET', '/quota/')).data.quota;
    const hours = (x) => `${Number(x).toFixed(2)} core hours`;
    replaceChildren(
      quota,
      bar('Disk', q.disk_bytes.used, q.disk_bytes.maximum, formatBytes),
      bar('Core hours', Number(q.core_hours.used), q.core_hours.maximum === null ? null : Number(q.core_hours.maximum), hours),
    );
  } catch (e) {
    replaceChildren(quota, h('p', { class: 'form-error' }, e.message));
  }
}

let quotaTimer = null;
function loadQuotaSoon() {
  // Disk use and shares change with workspace events: read them once the events settle.
  clearTimeout(quotaTimer);
  quotaTimer = setTimeout(() => {
    loadQuota();
    loadInbox(addWorkspace);
  }, 1000);
}

async function addWorkspace(id) {
  const found = (await api('GET', `/workspaces/${id}/`)).data.workspaces;
  for (const ws of found) store.workspaces.set(ws.id, ws);
  render(store);
}

function workspaceItem(store, ws) {
  let item = document.getElementById(`ws-${ws.id}`);
  if (!item) {
    item = h('li', { class: 'workspace card', id: `ws-${ws.id}` });
    item.sessions = h('div', { class: 'sessions' });
  }
  const head = h(
    'div',
    { class: 'ws-head' },
    h('h3', {}, h('a', { href: `${prefix}w/${ws.id}` }, ws.name || `Workspace ${ws.id}`)),
    h('p', { class: 'muted' }, h('span', { class: `badge ws-${ws.status}` }, ws.status), ` · ${formatBytes(ws.disk_space)}`, ws.description ? ` · ${ws.description}` : ''),
  );
  const active = store.jobsOf(ws.id).filter((j) => ACTIVE.has(j.status));
  renderCards(item.sessions, store, active, 'No running sessions.');
  replaceChildren(item, head, item.sessions, h('p', {}, h('a', { href: `${prefix}w/${ws.id}` }, 'Start a session or see past ones')));
  return item;
}

function render(store) {
  const workspaces = [...store.workspaces.values()].sort((a, b) => b.id - a.id);
  if (!workspaces.length) {
    list.replaceChildren(h('li', { class: 'muted' }, 'No workspaces yet: create one above.'));
    return;
  }
  list.replaceChildren(...workspaces.map((ws) => workspaceItem(store, ws)));
}

const store = new Store((event) => {
  render(store);
  if (event.type !== 'job') loadQuotaSoon();
});

const form = document.getElementById('create-form');
submitting(
  form,
  async () => {
    const body = { name: form.elements.name.value, description: form.elements.description.value };
    const ws = (await api('POST', '/workspaces/', body)).data.workspace;
    store.workspaces.set(ws.id, ws);
    render(store);
    form.reset();
    document.querySelector(`#ws-${ws.id} a`)?.focus();
  },
  { fields: { name: 'ws-name', description: 'ws-description' } },
);

store.loadJobTypes().catch(() => {});
loadQuota();
loadInbox(addWorkspace);
startEvents((event) => store.handle(event));
startCountdown();
