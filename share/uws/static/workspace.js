// A workspace's page: what it is, a form to start a session, its sessions (live), its files,
// and its settings (name, description, sharing, deletion).
import { api } from './api.js';
import { formatBytes, h, replaceChildren, showError, submitting } from './dom.js';
import { startEvents } from './events.js';
import { FileBrowser, setUpUpload } from './files.js';
import { Store, renderCards, startCountdown } from './sessions.js';
import { setUpDelete, setUpEdit, setUpShare } from './wsedit.js';

const workspaceId = Number(document.getElementById('workspace').dataset.workspaceId);
const form = document.getElementById('start-form');
const fields = { job_type: 'job-type' };
let parameters = [];

function describe(ws) {
  const title = document.getElementById('ws-title');
  const summary = document.getElementById('ws-summary');
  if (!ws) {
    title.textContent = `Workspace ${workspaceId}`;
    summary.textContent = 'No such workspace of yours.';
    return;
  }
  title.textContent = ws.name || `Workspace ${ws.id}`;
  document.title = `${title.textContent} · UWS`;
  replaceChildren(summary, h('span', { class: `badge ws-${ws.status}` }, ws.status), ` · ${formatBytes(ws.disk_space)}`, ws.description ? ` · ${ws.description}` : '');
}

function parameterField(p) {
  const id = `param-${p.variable_name}`;
  fields[p.variable_name] = id;
  const rules = p.validation ?? {};
  const label = h('label', { for: id }, p.display_name || p.variable_name);
  const error = h('p', { class: 'field-error', id: `${id}-error`, hidden: true });
  let input;
  if (rules.type === 'bool') {
    input = h('input', { id, name: p.variable_name, type: 'checkbox', checked: p.default_value === true, 'aria-describedby': `${id}-error` });
    return h('div', { class: 'field checkbox' }, input, label, error);
  }
  const numeric = rules.type === 'int' || rules.type === 'float';
  input = h('input', {
    id,
    name: p.variable_name,
    type: numeric ? 'number' : 'text',
    step: rules.type === 'float' ? 'any' : null,
    min: rules.min ?? null,
    max: rules.max ?? null,
    value: p.default_value ?? '',
    'aria-describedby': `${id}-error`,
  });
  return h('div', { class: 'field' }, label, input, p.description ? h('p', { class: 'hint' }, p.description) : null, error);
}

function options() {
  const values = {};
  for (const p of parameters) {
    const input = form.elements[p.variable_name];
    const type = p.validation?.type;
    if (type === 'bool') values[p.variable_name] = input.checked;
    else if (input.value === '') continue;
    else if (type === 'int') values[p.variable_name] = Number.isInteger(Number(input.value)) ? Number(input.value) : input.value;
    else if (type === 'float') values[p.variable_name] = Number(input.value);
    else values[p.variable_name] = input.value;
  }
  return values;
}

const files = new FileBrowser(workspaceId);
const fillEdit = setUpEdit(workspaceId);
const store = new Store(() => {
  describe(store.workspaces.get(workspaceId));
  fillEdit(store.workspaces.get(workspaceId));
  renderCards(document.getElementById('sessions'), store, store.jobsOf(workspaceId), 'No sessions yet.');
});

async function setUp() {
  const [jobTypes, params] = await Promise.all([store.loadJobTypes(), api('GET', '/parameters/')]);
  const select = document.getElementById('job-type');
  select.replaceChildren(...Object.values(jobTypes).map((t) => h('option', { value: t.id }, t.name)));
  parameters = params.data.parameters.filter((p) => p && p.variable_name);
  replaceChildren(document.getElementById('parameters'), parameters.map(parameterField));
}

submitting(
  form,
  async () => {
    const body = { job_type: form.elements.job_type.value, resource_options: options() };
    const job = (await api('PUT', `/workspaces/${workspaceId}/start/`, body)).data.job;
    if (!store.jobs.has(job.id)) store.noteJob(job); // (its events may have come first)
    store.onChange({ type: 'job' });
    document.getElementById(`job-${job.id}`)?.scrollIntoView({ block: 'nearest' });
  },
  { fields },
);

setUpUpload(workspaceId, files);
setUpDelete(workspaceId);
setUpShare(workspaceId);
files.open('');
setUp()
  .catch((error) => showError(form, fields, error.message))
  .finally(() => startEvents((event) => store.handle(event)));
startCountdown();
