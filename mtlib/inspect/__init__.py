"""Looking inside a run: compare traces (`compare/`), check the engine against the plan
(`shapecheck.py`), and the notebook views (`widgets/`). The top of the library: it may import
every layer below (a comparison replays stages, the views plan and read videos); nothing
below imports it.
"""
