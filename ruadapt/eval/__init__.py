"""``ruadapt eval``: how users decide whether an adaptation worked (docs/design.md §5).

- :mod:`.bpb`: bits per byte on plain text and on the assistant turns of chat data, every token scored;
- :mod:`.speed`: generation speed in characters and tokens per second, models alternating;
- :mod:`.lm_eval_runner` + ``tasks/``: lm-eval tasks on the already-loaded model (shipped ones offline);
- :mod:`.task_select`: which task a ``--tasks`` name means (shipped, ``--include-path``, lm-eval registry),
  data checked;
- :mod:`.report`: report.json, report.md, PNG plots;
- :mod:`.run`: the stage itself (checks every input first, then loads, measures and writes atomically).
"""
