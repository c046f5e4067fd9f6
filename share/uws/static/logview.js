// A session's output, followed live: what the server kept (GET /jobs/<id>/log/, read on from
// next_offset), then the job's own websocket with ?logs=true. The page keeps only the newest
// MAX_CHARS, so a chatty session cannot fill the browser's memory.
import { api } from './api.js';
import { h } from './dom.js';

const MAX_CHARS = 200_000;
const MAX_READS = 64; // (each read is at most 64 KiB: enough to reach the end of a 1 MiB log)

class LogView {
  constructor(jobId) {
    this.jobId = jobId;
    this.next = 0;
    this.socket = null;
    this.text = h('pre', { class: 'log', tabindex: 0, 'aria-label': `Output of session ${jobId}` });
    this.state = h('p', { class: 'muted', role: 'status' });
    this.element = h(
      'details',
      { class: 'log-view', ontoggle: () => (this.element.open ? this.follow() : this.stop()) },
      h('summary', { dataset: { focusKey: `log-${jobId}` } }, 'Output'),
      this.state,
      this.text,
    );
  }

  append(text) {
    const kept = (this.text.textContent + text).slice(-MAX_CHARS);
    const atBottom = this.text.scrollTop + this.text.clientHeight >= this.text.scrollHeight - 4;
    this.text.textContent = kept;
    if (atBottom) this.text.scrollTop = this.text.scrollHeight;
  }

  async readFrom(offset) {
    for (let i = 0; i < MAX_READS; i += 1) {
      const data = (await api('GET', `/jobs/${this.jobId}/log/?offset=${offset}`)).data;
      if (data.offset > offset) this.append(`\n[${data.offset - offset} bytes no longer kept]\n`);
      this.append(data.text);
      offset = data.next_offset;
      this.next = offset;
      if (data.complete || offset >= data.end_offset) return data.complete;
    }
    return false;
  }

  async follow() {
    this.text.textContent = '';
    this.next = 0;
    this.state.textContent = 'Loading…';
    let complete = false;
    try {
      complete = await this.readFrom(0);
    } catch (e) {
      if (e.status !== 409) {
        this.state.textContent = e.message;
        return;
      }
    }
    if (complete) {
      this.state.textContent = 'The session has ended: this is all of its output.';
      return;
    }
    this.state.textContent = 'Following the output as it comes.';
    this.connect();
  }

  async connect() {
    let ticket;
    try {
      ticket = (await api('POST', '/ws_tickets/')).data.ticket;
    } catch (e) {
      this.state.textContent = e.message;
      return;
    }
    if (!this.element.open) return;
    const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
    const socket = new WebSocket(`${scheme}//${window.location.host}/ws/jobs/${this.jobId}/?logs=true&ticket=${encodeURIComponent(ticket)}`);
    this.socket = socket;
    // (data-state: whether output now arrives as it is written, for a look from the tests)
    socket.onopen = () => {
      this.element.dataset.state = 'following';
    };
    // Messages come in order; a gap (output sent while we read, or coalesced away) is read back
    // from the log first, so the text stays in order.
    let queue = Promise.resolve();
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.type !== 'log') return;
      queue = queue.then(async () => {
        const end = event.offset + new TextEncoder().encode(event.text).length;
        if (end <= this.next) return; // (already read from the log)
        if (event.offset > this.next) await this.readFrom(this.next).catch(() => {});
        if (end <= this.next) return;
        this.append(event.offset >= this.next ? event.text : new TextDecoder().decode(new TextEncoder().encode(event.text).slice(this.next - event.offset)));
        this.next = end;
      });
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.element.dataset.state = 'closed';
      queue.then(() => {
        if (this.element.open) this.state.textContent = 'The session has ended or the stream closed: reopen to read again.';
      });
    };
  }

  stop() {
    const socket = this.socket;
    this.socket = null;
    this.element.dataset.state = 'closed';
    socket?.close();
  }
}

// One viewer per job, kept across re-renders of its card (an open viewer stays open).
const views = new Map();
export function logView(jobId) {
  if (!views.has(jobId)) views.set(jobId, new LogView(jobId));
  return views.get(jobId).element;
}
