"""The offline teacher: an OpenAI-compatible server that composes blessings from a phrase bank (not an LLM).

- `bank`: the phrase bank (resources/phrases.yaml), read and checked;
- `prompt`: what a generation prompt asks for (`Ask`);
- `compose`: a blessing for an `Ask`, one builder per style;
- `server`: the HTTP API, `running_teacher()` for the generate stage, and `zhufu serve-teacher`.
"""
