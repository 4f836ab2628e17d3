"""Job one, `train.py`: pretraining a model (run), loading its workdir (load), starting
from a checkpoint (transfer) and sizing a run's memory (memory)."""
