// The inbox of workspaces others shared with the user: accept one (it becomes theirs, and
// onAccepted(id) is told) or decline it (its copy is removed).
import { api } from './api.js';
import { h, replaceChildren } from './dom.js';

const inbox = document.getElementById('inbox');
const error = document.getElementById('inbox-error');

function sender(owner) {
  const name = `${owner.first_name} ${owner.last_name}`.trim();
  return name ? `${name} (${owner.username})` : owner.username;
}

function answer(share, verb, label, onAccepted) {
  const copy = share.shared_workspace_id;
  return h(
    'button',
    {
      type: 'button',
      class: verb === 'accept' ? 'primary' : null,
      dataset: { focusKey: `${verb}-${copy.id}` },
      'aria-label': `${label} ${copy.name || `workspace ${copy.id}`}`,
      onclick: async (e) => {
        e.target.disabled = true;
        error.hidden = true;
        try {
          if (verb === 'accept') await api('PUT', `/shared_workspaces/${copy.id}/accept/`);
          else await api('DELETE', `/shared_workspaces/${copy.id}/`);
          await loadInbox(onAccepted);
          // (accepting publishes no event: the page reads the workspace it now has)
          if (verb === 'accept') onAccepted(copy.id);
        } catch (failure) {
          error.textContent = failure.message;
          error.hidden = false;
          e.target.disabled = false;
        }
      },
    },
    label,
  );
}

export async function loadInbox(onAccepted) {
  try {
    const shares = (await api('GET', '/shared_workspaces/?is_accepted=false')).data.shared_workspaces;
    if (!shares.length) {
      replaceChildren(inbox, h('p', { class: 'muted' }, 'Nothing waiting for you.'));
      return;
    }
    const items = shares.map((share) => {
      const copy = share.shared_workspace_id;
      return h(
        'li',
        { class: 'share', id: `share-${copy.id}` },
        h('p', {}, h('strong', {}, copy.name || `Workspace ${copy.id}`), ` from ${sender(copy.user_id)}`, copy.description ? ` · ${copy.description}` : ''),
        h('div', { class: 'actions' }, answer(share, 'accept', 'Accept', onAccepted), answer(share, 'decline', 'Decline', onAccepted)),
      );
    });
    replaceChildren(inbox, h('ul', { class: 'plain' }, items));
  } catch (e) {
    error.textContent = e.message;
    error.hidden = false;
  }
}
