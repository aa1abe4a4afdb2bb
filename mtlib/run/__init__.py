"""The run: from a valid plan to an mp4 with sound, in the order it happens.

`prepare.py` (device, precision, the plan; an invalid plan is refused before anything loads),
`load.py` (the networks, adapted to the loop), `preprocess.py` (audio and image as planned),
`loop.py` (the clip / streaming loop: `generate`, which consumes the plan), `loop_plan.py`
(LoopPlan, PlanDriftError, GenerationSettings), `noise.py` (seeded or recorded noise),
`sampling.py` (timesteps, guidance, Euler), `color.py` (colour correction), `generation.py`
(`generate_video`: the whole run, its output and record), `ranks.py` (one run over several
GPUs), `bench.py` (the whole-clip GPU benchmark), `notebooks.py` (`mtlib run`: the notebooks
headless). Nothing is imported here: `mtlib.run.<module>` loads only what it needs.
"""
