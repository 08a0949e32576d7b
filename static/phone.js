() => {
  // On a phone a sidebar would cover the chat: both start closed there (their chevrons open them).
  // A sidebar gets its "open" class a moment after it appears, so each is watched until closed once.
  if (window.innerWidth >= 768) return;
  const closed = new Set();
  const close = (tries) => {
    for (const id of ["settings", "chats"]) {
      const bar = document.getElementById(id);
      if (bar && !closed.has(id) && bar.classList.contains("open")) {
        bar.querySelector(".toggle-button")?.click();
        closed.add(id);
      }
    }
    if (closed.size < 2 && tries > 0) setTimeout(() => close(tries - 1), 100);
  };
  close(80);
}
