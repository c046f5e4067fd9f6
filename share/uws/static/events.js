// /ws/events for pages: a ticket fetched with the cookie opens the socket; a lost socket is
// opened again after a growing wait (1 s doubling to 30 s, with jitter), resuming after the
// last event seen (?last_event_id), so nothing is missed and nothing is polled.
import { api, signIn } from './api.js';

const FIRST_WAIT_MS = 1000;
const LONGEST_WAIT_MS = 30000;

export class EventStream {
  constructor(onEvent, onState) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.lastId = null;
    this.wait = FIRST_WAIT_MS;
    this.socket = null;
    this.timer = null;
  }

  async connect() {
    this.timer = null;
    this.onState(this.lastId === null ? 'connecting' : 'reconnecting');
    let ticket;
    try {
      ticket = (await api('POST', '/ws_tickets/')).data.ticket;
    } catch (e) {
      if (e.status !== 401) this.retry();
      return;
    }
    const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
    let url = `${scheme}//${window.location.host}/ws/events/?ticket=${encodeURIComponent(ticket)}`;
    if (this.lastId !== null) url += `&last_event_id=${this.lastId}`;
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.onopen = () => {
      this.wait = FIRST_WAIT_MS;
      this.onState('live');
    };
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (typeof event.id === 'number') this.lastId = event.id;
      this.onEvent(event);
    };
    socket.onclose = (close) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (close.code === 4401) signIn(); // the session was signed out or has expired
      else this.retry();
    };
  }

  retry() {
    if (this.timer !== null) return;
    this.onState('reconnecting');
    const wait = this.wait * (0.75 + Math.random() / 2);
    this.wait = Math.min(this.wait * 2, LONGEST_WAIT_MS);
    this.timer = setTimeout(() => this.connect(), wait);
  }
}

const STATE_TEXT = {
  connecting: 'Connecting…',
  reconnecting: 'Connection lost; reconnecting…',
  live: 'Live: changes show as they happen.',
};

// The stream every page opens, its state shown in the page's status line.
export function startEvents(onEvent) {
  const line = document.getElementById('live');
  const stream = new EventStream(onEvent, (state) => {
    if (line) {
      line.textContent = STATE_TEXT[state];
      line.dataset.state = state;
    }
  });
  window.uwsEvents = stream; // (for the browser tests, and for a look from the console)
  stream.connect();
  return stream;
}
