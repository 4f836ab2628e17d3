"""A short BiLSTM SST-2 run for hyperparameter search: configs/finetune_sst2_lstm.py's model and
data, 400 steps of batch 64 (25,600 phrases, 0.38 epoch) with a dev evaluation every 100.

  python -m flaxlm.search --config=configs/search_sst2_lstm.py \
      --space=configs/search_sst2_lstm.json --trials=20 --study_dir=/tmp/search_sst2

The space (configs/search_sst2_lstm.json) searches the learning rate (log-uniform), dropout,
the embedding and hidden widths and the batch size; TPE samples, the median pruner stops a
trial whose dev accuracy at a step is below the median of earlier trials at that step.
Trained alone with its hand-set values (finetune_sst2_lstm.py's: lr 2e-3, dropout 0.3, 128-d,
batch 64), it is the baseline the search has to beat:
  python finetune.py --config=configs/search_sst2_lstm.py --workdir=/tmp/sst2_lstm_short
Hardware: 2 CPU cores. Time and results: README (Hyperparameter search).
"""

import pathlib
import runpy

_full = runpy.run_path(str(pathlib.Path(__file__).with_name("finetune_sst2_lstm.py")))


def get_config():
  c = _full["get_config"]()
  c.num_epochs = 0.0
  c.num_train_steps = 400
  c.eval_every = 100
  c.checkpoint_every = 400  # one save per trial: the search's time goes to training
  c.log_every = 100
  return c
