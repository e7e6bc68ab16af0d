"""The offline teacher: an OpenAI-compatible server that composes blessings from a phrase bank (not an LLM).

- `bank`: the phrase bank (resources/phrases.yaml), read and checked;
- `prompt`: what a generation prompt asks for (`Ask`);
- `compose`: a blessing for an `Ask`, one builder per style;
- `server`: the HTTP API, `running_teacher()` for the generate stage, and `zhufu serve-teacher`.
"""

from zhufu.teacher.bank import DEFAULT_PHRASES, load_phrases
from zhufu.teacher.compose import compose
from zhufu.teacher.prompt import Ask, parse_prompt
from zhufu.teacher.server import answer, running_teacher, start_teacher, teacher_stats

__all__ = [
    "DEFAULT_PHRASES",
    "Ask",
    "answer",
    "compose",
    "load_phrases",
    "parse_prompt",
    "running_teacher",
    "start_teacher",
    "teacher_stats",
]
