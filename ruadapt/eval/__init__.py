"""``ruadapt eval``: how users decide whether an adaptation worked (docs/design.md §5).

- :mod:`.bpb`: bits per byte on plain text and on the assistant turns of chat data, every token scored;
- :mod:`.speed`: generation speed in characters and tokens per second, models alternating;
- :mod:`.lm_eval_runner` + ``tasks/``: shipped lm-eval tasks run offline on the already-loaded model;
- :mod:`.report`: report.json, report.md, PNG plots;
- :mod:`.run`: the stage itself (checks every input first, then loads, measures and writes atomically).
"""
