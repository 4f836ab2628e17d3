"""The engine both jobs run: train state and jitted steps, optimizer, checkpoints, the
training loop, reporting, and the checks made before any data is read."""
