"""What the tests share, each in one place (test files import from here, never from one another):

- processes: stack.py (controller, workers, routers on free ports; DEMO_MODEL, EXAMPLES), ui_process.py (the web UI),
  launched.py (the launcher), ray_nodes.py + netns.py (hosts in network namespaces)
- stand-ins for the layer below the one under test: scripted_engine.py (an engine inside a real worker),
  scripted_turbomind.py (TurboMind's CUDA part, and our engine loaded on it), standin_workers.py and
  loopback_workers.py (workers for a real controller / the dispatcher), stream_chunks.py (what they send),
  ui_handlers.py (the UI's handlers on a scripted source)
- requests and clients: chat_http.py (chat bodies, held streams, the worker table), raw_http.py (raw sockets),
  browser.py (Chromium pages and their checks), metrics_text.py (/metrics parsed)
- inputs: media_samples.py (images, data: URLs), video_samples.py (clips), icc_profiles.py, reference_decode.py,
  registry_records.py (registrations and a hand-set clock)
- timing: waiting.py (wait_until, holds_for, settled: conditions with deadlines instead of sleeps)
"""
