// What pages know of the user's workspaces and sessions, kept up to date by /ws/events, and the
// session card: pending (why, and when it may start), running (time left, Open, Stop), ended.
import { api } from './api.js';
import { formatDuration, h, replaceChildren, submitting } from './dom.js';
import { logView } from './logview.js';

export const ACTIVE = new Set(['pending', 'running', 'stopping']);
const STATUS_TEXT = {
  pending: 'Waiting to start',
  running: 'Running',
  stopping: 'Stopping',
  complete: 'Ended',
  failed: 'Failed',
};

export class Store {
  constructor(onChange) {
    this.workspaces = new Map();
    this.jobs = new Map();
    this.jobTypes = {};
    // Per job: the statuses this page has seen it in, and when its time left was read.
    this.seen = new Map();
    this.onChange = onChange;
  }

  noteJob(job) {
    const seen = this.seen.get(job.id) ?? [];
    if (seen.at(-1)?.status !== job.status) seen.push({ status: job.status, at: new Date() });
    this.seen.set(job.id, seen);
    const left = job.job_details?.current_job_details?.time_left;
    job.endsAt = typeof left === 'number' ? Date.now() + left * 1000 : null;
    this.jobs.set(job.id, job);
  }

  handle(event) {
    // A session's metrics reading (every heartbeat) changes nothing the pages show: no redraw.
    if (event.type === 'metrics') return;
    if (event.type === 'snapshot') {
      this.workspaces = new Map(event.data.workspaces.map((w) => [w.id, w]));
      this.jobs = new Map();
      for (const job of event.data.jobs) this.noteJob(job);
    } else if (event.type === 'workspace') {
      this.workspaces.set(event.data.id, event.data);
    } else if (event.type === 'workspace_deleted') {
      this.workspaces.delete(event.data.id);
    } else if (event.type === 'job') {
      this.noteJob(event.data);
    }
    this.onChange(event);
  }

  jobsOf(workspaceId) {
    return [...this.jobs.values()].filter((j) => j.workspace_id === workspaceId).sort((a, b) => b.id - a.id);
  }

  async loadJobTypes() {
    this.jobTypes = (await api('GET', '/job_types/')).data.job_types;
    return this.jobTypes;
  }
}

// A pending session's start-sooner suggestions (current_job_details.suggestions): smaller
// shapes the scheduler expects to start earlier, each with its options and expected start.
const SHAPE = {
  num_cpus: (n) => `${n} CPU${n === 1 ? '' : 's'}`,
  memory_mb: (n) => `${n} MB of memory`,
  time_limit_min: (n) => `${n} minutes`,
};

function startSooner(suggestions) {
  const items = suggestions.map((s) => {
    const shape = Object.entries(s.resource_options ?? {})
      .map(([name, value]) => (SHAPE[name] ? SHAPE[name](value) : `${name} ${value}`))
      .join(', ');
    const when = new Date(s.expected_start).toLocaleString();
    return h('li', {}, `${shape}: expected to start ${when}`);
  });
  return h('div', { class: 'suggestions' }, h('p', {}, 'Would start sooner as a smaller session:'), h('ul', {}, items));
}

function timeline(seen) {
  return h(
    'ol',
    { class: 'timeline', 'aria-label': 'Seen on this page' },
    seen.map((s) => h('li', { dataset: { status: s.status } }, `${STATUS_TEXT[s.status] ?? s.status} ${s.at.toLocaleTimeString()}`)),
  );
}

// The last refusal of an action on a session (Stop, Extend), shown on its card until the next
// action: a live update of the card must not wipe it.
const jobErrors = new Map();

// Extend a running session (PUT /jobs/<id>/extend/): one form per job, kept across re-renders
// so a choice being made survives a live update. The server's refusal (422 past the job type's
// maximum, 403 past the quota) shows on the card.
const extendForms = new Map();
function extendForm(jobId, onError) {
  if (extendForms.has(jobId)) return extendForms.get(jobId);
  const id = `extend-${jobId}`;
  const form = h(
    'form',
    { class: 'extend', novalidate: true },
    h('label', { for: id }, 'Add time'),
    h('select', { id, name: 'minutes' }, [15, 30, 60, 120, 240].map((m) => h('option', { value: m }, `${m} minutes`))),
    h('button', { type: 'submit', 'aria-label': `Extend session ${jobId}` }, 'Extend'),
  );
  submitting(form, () => api('PUT', `/jobs/${jobId}/extend/`, { minutes: Number(form.elements.minutes.value) }), {
    onError: (message) => onError(jobId, message),
  });
  extendForms.set(jobId, form);
  return form;
}

// The card of one session: an <article> whose content follows the job's status.
export function sessionCard(store, job, onError) {
  const current = job.job_details?.current_job_details ?? {};
  const typeName = store.jobTypes[job.job_type]?.name ?? job.job_type;
  const parts = [
    h(
      'h3',
      {},
      `Session ${job.id} · ${typeName} `,
      h('span', { class: `badge status-${job.status}` }, STATUS_TEXT[job.status] ?? job.status),
    ),
  ];
  if (current.message) parts.push(h('p', { class: 'message' }, current.message));
  if (job.status === 'pending' && Array.isArray(current.suggestions) && current.suggestions.length) {
    parts.push(startSooner(current.suggestions));
  }
  if (job.status === 'running') {
    if (job.endsAt !== null) {
      parts.push(
        h('p', {}, 'Time left: ', h('span', { class: 'time-left', dataset: { endsAt: job.endsAt } }, formatDuration((job.endsAt - Date.now()) / 1000))),
      );
    }
    const link = current.connection_details;
    const actions = [];
    if (link?.url_domain) {
      actions.push(
        h('a', { class: 'button primary', href: link.url_domain + link.url_path, target: '_blank', rel: 'noopener noreferrer', dataset: { focusKey: `open-${job.id}` } }, 'Open', h('span', { class: 'visually-hidden' }, ` session ${job.id} (new tab)`)),
      );
    }
    actions.push(
      h('button', {
        type: 'button',
        dataset: { focusKey: `stop-${job.id}` },
        'aria-label': `Stop session ${job.id}`,
        onclick: async (e) => {
          e.target.disabled = true;
          try {
            await api('PUT', `/jobs/${job.id}/stop/`);
          } catch (error) {
            e.target.disabled = false;
            onError(job.id, error.message);
          }
        },
      }, 'Stop'),
    );
    parts.push(h('div', { class: 'actions' }, actions));
    if (job.endsAt !== null) parts.push(extendForm(job.id, onError));
  }
  if (!ACTIVE.has(job.status) && job.datetime_end) {
    parts.push(h('p', { class: 'muted' }, `Ended ${new Date(job.datetime_end).toLocaleString()}`));
  }
  const failure = jobErrors.get(job.id);
  parts.push(h('p', { class: 'field-error', id: `job-${job.id}-error`, role: 'alert', hidden: !failure }, failure));
  if (job.status !== 'pending') parts.push(logView(job.id));
  const seen = store.seen.get(job.id);
  if (seen) parts.push(timeline(seen));
  return parts;
}

// Keep a container's cards in step with `jobs`: one <article> per job, updated in place.
export function renderCards(container, store, jobs, emptyText) {
  const showError = (jobId, message) => {
    if (message) jobErrors.set(jobId, message);
    else jobErrors.delete(jobId);
    const el = document.getElementById(`job-${jobId}-error`);
    if (el) {
      el.textContent = message;
      el.hidden = !message;
    }
  };
  if (!jobs.length) {
    replaceChildren(container, h('p', { class: 'muted' }, emptyText));
    return;
  }
  const cards = jobs.map((job) => {
    let card = document.getElementById(`job-${job.id}`);
    if (!card) card = h('article', { class: 'session', id: `job-${job.id}`, 'aria-label': `Session ${job.id}` });
    card.dataset.status = job.status;
    replaceChildren(card, sessionCard(store, job, showError));
    return card;
  });
  replaceChildren(container, cards);
}

// Time left, counted down each second between events.
export function startCountdown() {
  setInterval(() => {
    for (const el of document.querySelectorAll('.time-left')) {
      el.textContent = formatDuration((Number(el.dataset.endsAt) - Date.now()) / 1000);
    }
  }, 1000);
}
