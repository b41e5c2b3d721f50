"""The training algorithm: what a step trains on (batches.py), the step itself and its CUDA graph
(step.py), the EMA and the LR schedule (schedule.py), the length of a run (budget.py), the run's
state and its checkpoint (state.py), and what a run reports (log.py). train.py puts them together."""
