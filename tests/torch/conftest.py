"""One torch thread per test worker: tiny tensors gain nothing from more, and two threads
per worker on a shared 2-core machine make every parallel region wait for a busy core."""

import torch

torch.set_num_threads(1)
