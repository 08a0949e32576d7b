() => {
  // On a phone the settings sidebar would cover the chat: start it closed there (the chevron opens it).
  if (window.innerWidth >= 768) return;
  const close = (tries) => {
    const bar = document.querySelector("#settings.open");
    if (bar) bar.querySelector(".toggle-button")?.click();
    else if (tries > 0) setTimeout(() => close(tries - 1), 100);
  };
  close(50);
}
