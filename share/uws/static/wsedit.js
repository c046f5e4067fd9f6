// A workspace's own settings on its page: rename and describe it, share it (a dialog that
// searches people with GET /users/?search=), delete it after a confirmation.
import { api, prefix } from './api.js';
import { clearErrors, h, replaceChildren, showError, submitting } from './dom.js';

export function setUpEdit(workspaceId) {
  const form = document.getElementById('edit-form');
  const status = document.getElementById('edit-status');
  submitting(
    form,
    async () => {
      status.textContent = '';
      const body = { name: form.elements.name.value, description: form.elements.description.value };
      await api('PUT', `/workspaces/${workspaceId}/`, body);
      status.textContent = 'Saved.';
    },
    { fields: { name: 'edit-name', description: 'edit-description' } },
  );
  // (filled once, from the first news of the workspace: later events must not overwrite typing)
  let filled = false;
  return (ws) => {
    if (filled || !ws) return;
    filled = true;
    form.elements.name.value = ws.name;
    form.elements.description.value = ws.description;
  };
}

export function setUpDelete(workspaceId) {
  const dialog = document.getElementById('delete-dialog');
  const error = document.getElementById('delete-error');
  const opener = document.getElementById('delete-open');
  opener.addEventListener('click', () => {
    dialog.returnValue = ''; // (Escape leaves the last answer in place)
    dialog.showModal();
  });
  dialog.addEventListener('close', async () => {
    opener.focus();
    if (dialog.returnValue !== 'delete') return;
    error.hidden = true;
    opener.disabled = true;
    try {
      await api('DELETE', `/workspaces/${workspaceId}/`);
      window.location.assign(prefix);
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
      opener.disabled = false;
    }
  });
}

const SEARCH_WAIT_MS = 250;

export function setUpShare(workspaceId) {
  const dialog = document.getElementById('share-dialog');
  const form = document.getElementById('share-form');
  const people = document.getElementById('share-people');
  const status = document.getElementById('share-status');
  const opener = document.getElementById('share-open');
  const fields = { search: 'share-search' };
  const chosen = new Map();
  let timer = null;
  let asked = 0;

  function person(user) {
    const id = `share-user-${user.id}`;
    const name = `${user.first_name} ${user.last_name}`.trim() || user.username;
    return h(
      'div',
      { class: 'field checkbox' },
      h('input', {
        type: 'checkbox',
        id,
        checked: chosen.has(user.id),
        dataset: { focusKey: id },
        onchange: (e) => (e.target.checked ? chosen.set(user.id, name) : chosen.delete(user.id)),
      }),
      h('label', { for: id }, `${name} (${user.username}${user.email ? `, ${user.email}` : ''})`),
    );
  }

  async function search() {
    const query = form.elements.search.value.trim();
    const mine = ++asked;
    try {
      const users = (await api('GET', `/users/?search=${encodeURIComponent(query)}`)).data.users;
      if (mine !== asked) return; // (an older search answered late)
      clearErrors(form);
      replaceChildren(people, users.length ? users.map(person) : h('p', { class: 'muted' }, 'Nobody found.'));
    } catch (error) {
      if (mine === asked) showError(form, fields, error.message);
    }
  }

  opener.addEventListener('click', () => {
    chosen.clear();
    form.reset();
    clearErrors(form);
    replaceChildren(people, h('p', { class: 'muted' }, 'Type to search.'));
    dialog.showModal();
    search();
  });
  form.elements.search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(search, SEARCH_WAIT_MS);
  });
  document.getElementById('share-cancel').addEventListener('click', () => dialog.close());
  dialog.addEventListener('close', () => opener.focus());
  submitting(
    form,
    async () => {
      if (!chosen.size) throw new Error('Choose at least one person to share with.');
      await api('POST', '/shared_workspaces/', { original_workspace_id: workspaceId, shared_user_ids: [...chosen.keys()] });
      status.textContent = `Shared with ${[...chosen.values()].join(', ')}: they see it once they accept.`;
      dialog.close();
    },
    { fields },
  );
}
