# On a process's import path (bench/overhead_bench.py --controller-loop asyncio) this shadows the installed uvloop,
# so uvicorn's "auto" loop falls back to asyncio's: the same code measured with and without uvloop.
raise ImportError("uvloop hidden by bench/no_uvloop")
