// What pages know of the user's workspaces and sessions, kept up to date by /ws/events, and the
// session card: pending (why, and when it may start), running (time left, Open, Stop), ended.
import { api } from './api.js';
import { formatDuration, h, replaceChildren } from './dom.js';

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

function timeline(seen) {
  return h(
    'ol',
    { class: 'timeline', 'aria-label': 'Seen on this page' },
    seen.map((s) => h('li', { dataset: { status: s.status } }, `${STATUS_TEXT[s.status] ?? s.status} ${s.at.toLocaleTimeString()}`)),
  );
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
  }
  if (!ACTIVE.has(job.status) && job.datetime_end) {
    parts.push(h('p', { class: 'muted' }, `Ended ${new Date(job.datetime_end).toLocaleString()}`));
  }
  parts.push(h('p', { class: 'field-error', id: `job-${job.id}-error`, role: 'alert', hidden: true }));
  const seen = store.seen.get(job.id);
  if (seen) parts.push(timeline(seen));
  return parts;
}

// Keep a container's cards in step with `jobs`: one <article> per job, updated in place.
export function renderCards(container, store, jobs, emptyText) {
  const showError = (jobId, message) => {
    const el = document.getElementById(`job-${jobId}-error`);
    if (el) {
      el.textContent = message;
      el.hidden = false;
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
