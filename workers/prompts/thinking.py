"""InternVL3.5's thinking mode: the system prompt its authors trained it with, how it combines with a user's system
prompt, and the sampling the model card recommends. Which families think is decided from the checkpoint's config
(workers/model_spec.py sets `ModelSpec.thinking`), never from a folder name.

Sources:
- `R1_SYSTEM_PROMPT`: OpenGVLab/InternVL, internvl_chat/tools/reasoning_data_pipeline/utils/constants.py (the text
  the reasoning data was generated with; quoted exactly, because the model was trained on it).
- The InternVL3.5 model cards ("Thinking Mode"): set the system prompt to it (`model.system_message = ...`, which
  replaces the default system message) and sample with `do_sample=True, temperature=0.6` "to mitigate undesired
  repetition".
- With a user's system prompt as well: the authors combine the thinking prompt with further instructions by
  appending them after a newline (`INSTRUCTION_R1_EN = R1_SYSTEM_PROMPT + '\\n' + ...` in the same constants.py);
  we do the same, so the protocol the model was trained on comes first, unchanged.
"""

from __future__ import annotations

from common.errors import ErrorCode, ServingError

R1_SYSTEM_PROMPT = """
You are an AI assistant that rigorously follows this response protocol:

1. First, conduct a detailed analysis of the question. Consider different angles, potential solutions, and reason through the problem step-by-step. Enclose this entire thinking process within <think> and </think> tags.

2. After the thinking section, provide a clear, concise, and direct answer to the user's question. Separate the answer from the think section with a newline.

Ensure that the thinking process is thorough but remains focused on the query. The final answer should be standalone and not reference the thinking section.
""".strip()  # noqa: E501 - the authors' text, line for line

# The model card's recommendation; applied only to the fields a request does not set itself.
THINKING_SAMPLING: dict[str, float] = {"temperature": 0.6}


def check_thinking(thinking: bool | None, family: str, supported: bool, model_id: str | None = None) -> bool:
    """Whether this request thinks; a request asking a family without thinking mode is refused (400)."""
    if thinking and not supported:
        raise ServingError(ErrorCode.THINKING_UNSUPPORTED,
                           f"{'model ' + repr(model_id) if model_id else 'this model'} ({family}) has no thinking "
                           "mode; only InternVL3.5 checkpoints have one (see `capabilities` in /v1/models). Send the "
                           "request without \"thinking\"", param="thinking")
    return bool(thinking)


def thinking_system(user_system: str | None) -> str:
    """The system message of a thinking request: the authors' prompt, then the user's own, if any."""
    return R1_SYSTEM_PROMPT if not user_system else f"{R1_SYSTEM_PROMPT}\n{user_system}"
