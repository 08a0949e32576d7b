"""The UI keeps each uploaded file's data: URL between turns instead of re-reading and re-encoding the whole history
on every turn (app/encoded_files.py), bounded, and refreshed when the file changes."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from PIL import Image

from app.encoded_files import EncodedFiles
from app.messages import to_openai_messages


def picture(path: Path, colour=(200, 30, 30), size=(64, 48)) -> str:
    Image.new("RGB", size, colour).save(path)
    return str(path)


def history_with(*paths: str) -> list[dict]:
    out = []
    for k, path in enumerate(paths):
        out.append({"role": "user", "content": [{"type": "file", "file": {"path": path}},
                                                {"type": "text", "text": f"q{k}"}]})
        out.append({"role": "assistant", "content": [{"type": "text", "text": f"a{k}"}]})
    return out


def urls(messages: list[dict]) -> list[str]:
    return [p["image_url"]["url"] for m in messages if m["role"] == "user" for p in m["content"]
            if p["type"] == "image_url"]


def test_each_file_is_encoded_once_across_turns(tmp_path):
    files = EncodedFiles(max_bytes=2**20)
    a, b = picture(tmp_path / "a.png"), picture(tmp_path / "b.png", (0, 0, 255))
    first = urls(to_openai_messages(history_with(a), "", 8, 2**20, files.get))
    second = urls(to_openai_messages(history_with(a, b), "", 8, 2**20, files.get))
    third = urls(to_openai_messages(history_with(a, b), "", 8, 2**20, files.get))
    assert second[0] is first[0] and third == second and third[1] is second[1]  # the very same strings
    assert (files.misses, files.hits) == (2, 3)
    assert base64.b64decode(third[1].split(",", 1)[1]) == Path(b).read_bytes()


def test_a_file_changed_in_place_is_read_again(tmp_path):
    files = EncodedFiles(max_bytes=2**20)
    path = picture(tmp_path / "a.png")
    before = files.get(path, 2**20)[1]
    picture(tmp_path / "a.png", (0, 255, 0), size=(65, 48))
    os.utime(path, ns=(1, 1))  # another modification time, whatever the file system's clock resolution
    after = files.get(path, 2**20)[1]
    assert after != before and base64.b64decode(after.split(",", 1)[1]) == Path(path).read_bytes()


def test_held_text_stays_within_its_bound(tmp_path):
    paths = []
    for k in range(5):
        (tmp_path / f"{k}.png").write_bytes(os.urandom(1000))  # the cache does not look inside
        paths.append(str(tmp_path / f"{k}.png"))
    one = len(EncodedFiles(2**20).get(paths[0], 2**20)[1])
    files = EncodedFiles(max_bytes=2 * one + 10)
    for path in paths:
        files.get(path, 2**20)
    assert files.held_bytes <= files.max_bytes and len(files._entries) == 2
    files.get(paths[-1], 2**20)
    assert files.hits == 1  # the newest stayed
