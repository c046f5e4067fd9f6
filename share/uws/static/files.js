// A workspace's files: browse its folders (GET /workspaces/<id>/files/?path=), download a file
// (a link the browser follows with its cookie), upload into the folder on view with a progress
// bar (PUT /workspaces/<id>/upload/?path=, the server keeping it inside the workspace).
import { ApiError, answerOf, api, xsrf } from './api.js';
import { formatBytes, h, replaceChildren, submitting } from './dom.js';

const encodePath = (path) => path.split('/').map(encodeURIComponent).join('/');

export class FileBrowser {
  constructor(workspaceId) {
    this.workspaceId = workspaceId;
    this.path = '';
    this.list = document.getElementById('files');
    this.crumbs = document.getElementById('file-path');
    this.error = document.getElementById('files-error');
    this.onFolder = () => {};
  }

  // (this.path, where uploads go, changes only once the folder is listed)
  async open(path) {
    this.error.hidden = true;
    try {
      const data = (await api('GET', `/workspaces/${this.workspaceId}/files/?path=${encodeURIComponent(path)}`)).data;
      this.render(data);
    } catch (e) {
      this.error.textContent = e.message;
      this.error.hidden = false;
      replaceChildren(this.list);
    }
  }

  render(data) {
    this.path = data.path;
    this.onFolder(data.path);
    const names = data.path ? data.path.split('/') : [];
    const crumb = (label, to, current) =>
      current
        ? h('span', { 'aria-current': 'location' }, label)
        : h('button', { type: 'button', class: 'link', onclick: () => this.open(to), dataset: { focusKey: `crumb-${to}` } }, label);
    replaceChildren(
      this.crumbs,
      crumb('Top folder', '', names.length === 0),
      names.flatMap((name, i) => [' / ', crumb(name, names.slice(0, i + 1).join('/'), i === names.length - 1)]),
    );
    if (!data.entries.length) {
      replaceChildren(this.list, h('p', { class: 'muted' }, 'This folder is empty.'));
      return;
    }
    const rows = data.entries.map((entry) => this.row(data.path, entry));
    const table = h(
      'table',
      { class: 'files' },
      h('caption', { class: 'visually-hidden' }, `Files in ${data.path || 'the top folder'}`),
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Name'), h('th', { scope: 'col' }, 'Size'), h('th', { scope: 'col' }, 'Modified'))),
      h('tbody', {}, rows),
    );
    replaceChildren(this.list, table, data.truncated ? h('p', { class: 'muted' }, 'Only some of the entries are listed.') : null);
  }

  row(folder, entry) {
    const path = folder ? `${folder}/${entry.name}` : entry.name;
    const kind = entry.type === 'symlink' ? entry.target_type : entry.type;
    let name;
    if (kind === 'directory' && entry.target_allowed !== false) {
      name = h('button', { type: 'button', class: 'link', onclick: () => this.open(path) }, `${entry.name}/`);
    } else if (kind === 'file' && entry.target_allowed !== false) {
      name = h('a', { href: `/workspaces/${this.workspaceId}/files/${encodePath(path)}`, download: entry.name }, entry.name, h('span', { class: 'visually-hidden' }, ' (download)'));
    } else {
      name = h('span', {}, entry.name);
    }
    return h(
      'tr',
      {},
      h('td', {}, name),
      h('td', {}, entry.size === null ? '' : formatBytes(entry.size)),
      h('td', {}, new Date(entry.modified).toLocaleString()),
    );
  }
}

// PUT /workspaces/<id>/upload/?path=<folder> with XMLHttpRequest, whose upload events fetch()
// does not give.
function upload(workspaceId, folder, files, onProgress) {
  return new Promise((resolve, reject) => {
    const body = new FormData();
    for (const file of files) body.append('files', file, file.name);
    const request = new XMLHttpRequest();
    request.open('PUT', `/workspaces/${workspaceId}/upload/?path=${encodeURIComponent(folder)}`);
    request.setRequestHeader('X-XSRFToken', xsrf);
    request.setRequestHeader('Accept', 'application/json');
    request.responseType = 'json';
    request.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    };
    request.onload = () => {
      try {
        resolve(answerOf(request.status, request.response));
      } catch (e) {
        reject(e);
      }
    };
    request.onerror = () => reject(new ApiError(0, 'The upload did not reach the server. Check the connection and try again.'));
    request.send(body);
  });
}

export function setUpUpload(workspaceId, browser) {
  const form = document.getElementById('upload-form');
  const progress = document.getElementById('upload-progress');
  const status = document.getElementById('upload-status');
  const into = document.getElementById('upload-into');
  // (the server names the query's path in its refusals: they go by the file field too)
  const fields = { file: 'upload-files', path: 'upload-files' };
  browser.onFolder = (folder) => {
    into.textContent = folder ? `(into the folder ${folder})` : "(into the workspace's top folder)";
  };
  submitting(
    form,
    async () => {
      const files = [...form.elements.files.files];
      if (!files.length) throw new Error('Choose one or more files to upload.');
      const folder = browser.path;
      progress.value = 0;
      document.getElementById('upload-progress-field').hidden = false;
      status.textContent = 'Uploading…';
      try {
        await upload(workspaceId, folder, files, (loaded, total) => {
          progress.value = Math.round((100 * loaded) / total);
          status.textContent = `${formatBytes(loaded)} of ${formatBytes(total)}`;
        });
      } catch (error) {
        status.textContent = '';
        throw error;
      }
      progress.value = 100;
      status.textContent = `Uploaded ${files.map((f) => f.name).join(', ')}${folder ? ` into ${folder}` : ''}.`;
      form.reset();
      await browser.open(folder);
    },
    { fields },
  );
}
