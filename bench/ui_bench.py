"""What the web UI adds on top of the API: time to first visible token, visible token rate, Stop latency and long
tasks in the page, each side by side with the API in one run.

    .venv/bin/python bench/ui_bench.py                 # ~3 minutes on 2 cores (~6 with --compare-root)
    .venv/bin/python bench/ui_bench.py --rate 400 --runs 10 --json out.json

Real processes on loopback: one controller, one scripted worker (tests/support/scripted_engine.py: tokens at a set
rate, no model, so the figures are the serving path's and the page's, not a model's), the UI process (`python -m
app`), and Debian's Chromium driven by Playwright. The API side is a streaming client on the controller.

- TTFT: API = request -> first content event; UI = Enter keydown -> first answer text in the DOM (page clock).
  UI-added = median(UI) - median(API), median of --runs each, interleaved.
- Visible rate: words of a --tokens answer in the DOM over time (first to last change) vs the API's event rate.
- Stop: click -> Stop disabled again and the answer's last change, while a long answer streams.
- Long tasks: PerformanceObserver 'longtask' entries while a --tokens answer streams.
- Kept chats: TTFT again once the page keeps --kept-chats past chats of --kept-tokens tokens each (the page gets
  slower as the browser's storage grows, if anything copies or rewrites it per update).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Stack, build_checkpoint, chat_body, client, machine, scripted_env, stream_chat  # noqa: E402
from tests.support.browser import BOTS, launch_browser, open_page, pick_model, wait_idle  # noqa: E402
from tests.support.ui_process import start_ui  # noqa: E402

MODEL = "scripted"
WATCH = """() => {
  // Page-clock records: when Enter went down, when the answer first showed text, each change of its word count.
  window.bench = {enter: null, user: null, first: null, changes: [], longtasks: []};
  document.addEventListener('keydown', e => { if (e.key === 'Enter') window.bench.enter = performance.now(); }, true);
  new PerformanceObserver(list => list.getEntries().forEach(e => window.bench.longtasks.push(e.duration)))
    .observe({type: 'longtask', buffered: false});
  const chat = document.querySelector('#chat');
  new MutationObserver(() => {
    if (window.bench.user === null && chat.querySelector('.user-row')) window.bench.user = performance.now();
    const bots = chat.querySelectorAll('.bot-row');
    if (!bots.length) return;
    const words = bots[bots.length - 1].innerText.split(/\\s+/).filter(Boolean).length;
    const b = window.bench, last = b.changes.length ? b.changes[b.changes.length - 1][1] : 0;
    if (words && b.first === null) b.first = performance.now();
    if (words !== last) b.changes.push([performance.now(), words]);
  }).observe(chat, {childList: true, subtree: true, characterData: true});
}"""
RESET = "() => { Object.assign(window.bench, {enter: null, user: null, first: null, changes: [], longtasks: []}); }"


async def api_ttft(url: str, max_tokens: int) -> float:
    async with client() as http:
        r = await stream_chat(http, url, chat_body(max_tokens, model=MODEL))
    assert r.error is None, r.error
    return r.ttft


async def api_rate(url: str, tokens: int) -> float:
    """Tokens per second of one streamed answer, first token to last."""
    async with client() as http:
        start = time.perf_counter()
        r = await stream_chat(http, url, chat_body(tokens, model=MODEL))
        end = time.perf_counter()
    assert r.error is None and r.tokens >= tokens * 0.95, (r.error, r.tokens)
    return (r.tokens - 1) / (end - start - r.ttft)


def off_thread(coro):
    """Playwright's sync API runs an event loop in this thread: the API client runs in its own."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def ui_turn(page, text: str, timeout_s: float = 120) -> dict:
    page.locator("#clear-btn").click()
    page.wait_for_function(f"() => document.querySelectorAll('{BOTS}').length === 0")
    page.evaluate(RESET)
    page.locator("#input textarea").fill(text)
    page.locator("#input textarea").press("Enter")
    page.wait_for_function("() => window.bench.first !== null", timeout=timeout_s * 1000)
    wait_idle(page, timeout_s)
    page.wait_for_timeout(200)
    return page.evaluate("() => window.bench")


def set_max_tokens(page, n: int) -> None:
    field = page.locator("input[aria-label='number input for Max new tokens']")
    field.fill(str(n))
    field.press("Enter")
    page.wait_for_timeout(200)


def stop_latency(page, after_words: int = 40) -> tuple[float, float]:
    """(ms from the click to Stop being disabled, ms from the click to the answer's last change)."""
    page.locator("#clear-btn").click()
    page.wait_for_function(f"() => document.querySelectorAll('{BOTS}').length === 0")
    page.evaluate(RESET)
    page.locator("#input textarea").fill("a long answer")
    page.locator("#input textarea").press("Enter")
    page.wait_for_function(f"() => window.bench.changes.length && "
                           f"window.bench.changes[window.bench.changes.length - 1][1] > {after_words}")
    clicked = page.evaluate("""() => new Promise(resolve => {
        const stop = document.querySelector('#stop-btn');
        const t0 = performance.now();
        new MutationObserver((_, obs) => { if (stop.disabled) { obs.disconnect(); resolve([t0, performance.now()]); } })
          .observe(stop, {attributes: true});
        stop.click();
    })""")
    page.wait_for_timeout(1000)
    changes = page.evaluate("() => window.bench.changes")
    last_change = max(t for t, _ in changes)
    return clicked[1] - clicked[0], max(0.0, last_change - clicked[0])


def keep_chats(page, chats: int, tokens: int) -> None:
    """Fill the page's past chats list: `chats` conversations of one `tokens`-token answer each."""
    set_max_tokens(page, tokens)
    for k in range(chats):
        ui_turn(page, f"kept chat {k}")  # Clear starts a new chat, and the finished one is kept


def measure(pages: dict, controller_url: str, args) -> dict:
    """All phases on every page (name -> page); TTFT interleaved API / page / page per round."""
    out = {name: {"ttft": [], "shown": []} for name in pages}
    api = []
    for page in pages.values():
        set_max_tokens(page, 16)
    for i in range(args.runs + 1):
        a = off_thread(api_ttft(controller_url, 16))
        for name, page in pages.items():
            b = ui_turn(page, f"hello {i}")
            if i:  # the first round warms up every path
                out[name]["ttft"].append(b["first"] - b["enter"])
                out[name]["shown"].append(b["user"] - b["enter"])
        if i:
            api.append(a * 1000)
    api_tps = off_thread(api_rate(controller_url, args.tokens))
    for name, page in pages.items():
        r = out[name]
        set_max_tokens(page, args.tokens)
        b = ui_turn(page, "a long answer")
        (t0, w0), (t1, w1) = b["changes"][0], b["changes"][-1]
        r["tps"] = (w1 - w0) / ((t1 - t0) / 1000)
        r["updates"] = len(b["changes"])
        r["longtasks"] = [round(d) for d in b["longtasks"]]
        set_max_tokens(page, 3000)
        r["stops"] = [stop_latency(page) for _ in range(5)]
    if args.kept_chats:
        for name, page in pages.items():
            keep_chats(page, args.kept_chats, args.kept_tokens)
            out[name]["kept_storage_bytes"] = page.evaluate(
                "() => Object.values(localStorage).reduce((n, v) => n + v.length, 0)")
            set_max_tokens(page, 16)
            out[name]["kept_ttft"] = []
        for i in range(args.runs + 1):
            for name, page in pages.items():
                b = ui_turn(page, f"hello again {i}")
                if i:
                    out[name]["kept_ttft"].append(b["first"] - b["enter"])
    return {"api_ttft_ms": statistics.median(api), "api_tokens_per_s": api_tps, "ui": out}


def report(name: str, r: dict, api_ttft: float, api_tps: float, args) -> dict:
    ttft = statistics.median(r["ttft"])
    res = {"ui_ttft_ms": ttft, "ui_added_ttft_ms": ttft - api_ttft, "own_message_shown_ms": statistics.median(r["shown"]),
           "ui_visible_tokens_per_s": r["tps"], "visible_rate_ratio": r["tps"] / api_tps, "updates": r["updates"],
           "stop_disabled_ms": [round(s[0], 1) for s in r["stops"]],
           "stop_last_change_ms": [round(s[1], 1) for s in r["stops"]],
           "long_tasks_over_100ms": sum(d > 100 for d in r["longtasks"]), "long_tasks_all_ms": r["longtasks"]}
    if r.get("kept_ttft"):
        kept = statistics.median(r["kept_ttft"])
        res.update(kept_chats=args.kept_chats, kept_storage_bytes=r["kept_storage_bytes"], kept_ui_ttft_ms=kept,
                   kept_ui_added_ttft_ms=kept - api_ttft)
    print(f"[{name}]")
    print(f"  time to first token  UI {ttft:7.1f} ms   UI-added {res['ui_added_ttft_ms']:7.1f} ms (target <= 150); "
          f"Enter -> own message shown {res['own_message_shown_ms']:.1f} ms")
    print(f"  visible rate         {r['tps']:7.1f} tok/s   ratio to API {res['visible_rate_ratio']:.2f} (target >= 0.90); "
          f"{r['updates']} page updates for {args.tokens} tokens")
    print(f"  Stop                 click -> disabled {res['stop_disabled_ms']} ms; click -> last change "
          f"{res['stop_last_change_ms']} ms (target <= 200)")
    print(f"  long tasks > 100 ms  {res['long_tasks_over_100ms']} (target 0); all (> 50 ms): {r['longtasks']}")
    if "kept_ui_ttft_ms" in res:
        print(f"  with {args.kept_chats} kept chats ({res['kept_storage_bytes'] / 1000:.0f} kB in the browser's storage): "
              f"time to first token UI {res['kept_ui_ttft_ms']:7.1f} ms   UI-added {res['kept_ui_added_ttft_ms']:7.1f} ms")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=500, help="length of the streamed answer (rate, long tasks)")
    ap.add_argument("--rate", type=float, default=200.0, help="the scripted worker's tokens per second")
    ap.add_argument("--kept-chats", type=int, default=30, help="past chats to keep before measuring TTFT again "
                    "(0: skip; the UI keeps at most 30)")
    ap.add_argument("--kept-tokens", type=int, default=500, help="length of each kept chat's answer")
    ap.add_argument("--compare-root", type=Path, help="another checkout (e.g. a worktree of main): its UI is measured "
                    "side by side, against the same controller")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    with Stack() as stack:
        checkpoint = build_checkpoint(stack.work)
        controller = stack.controller()
        stack.workers(checkpoint, controller, {MODEL: scripted_env(100_000, args.rate)})
        uis = {"this UI": start_ui(controller.url, stack.logs, stack.work / "conversations", "--no-logging")}
        if args.compare_root:
            uis[str(args.compare_root)] = start_ui(controller.url, stack.logs, stack.work / "conversations-2",
                                                   "--no-logging", root=args.compare_root)
        for ui in uis.values():
            stack.callback(ui.stop)
        with launch_browser() as browser:
            pages = {}
            for name, ui in uis.items():
                pages[name] = open_page(browser, ui.url)
                pick_model(pages[name], MODEL)
                pages[name].evaluate(WATCH)
            m = measure(pages, controller.url, args)

    print(f"machine: {machine()}")
    print(f"scripted worker: {args.rate:.0f} tokens/s; TTFT median of {args.runs}; a {args.tokens}-token answer")
    print(f"API: time to first token {m['api_ttft_ms']:.1f} ms; stream rate {m['api_tokens_per_s']:.1f} tok/s")
    result = {"machine": machine(), "rate": args.rate, "tokens": args.tokens, "runs": args.runs,
              "api_ttft_ms": m["api_ttft_ms"], "api_tokens_per_s": m["api_tokens_per_s"],
              "ui": {name: report(name, r, m["api_ttft_ms"], m["api_tokens_per_s"], args) for name, r in m["ui"].items()}}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
