"""train.py with fault injection and introspection wrapped around its steps, for tests that launch
it with `accelerate launch tests/train_with_hooks.py …` (same arguments as train.py):

- W2V_TEST_NAN_UPDATE=N: rank 0's loss is NaN in update N (counted from 0 in this process);
- W2V_TEST_DUMP_GRADIENTS=FILE: rank 0 saves the first update's all-reduced gradients (before
  clipping) to FILE, and the model's gradient checkpointing and layerdrop settings to FILE.json;
- W2V_TEST_SIGNAL_AT_UPDATE=N (with W2V_TEST_SIGNAL_TO=self|parent): rank 0 sends SIGTERM (or
  W2V_TEST_SIGNAL, W2V_TEST_SIGNAL_TIMES times: SIGINT twice is a double Ctrl-C) to itself or to
  its parent (the `accelerate launch` process) when update N starts;
- W2V_TEST_LOGITS_DTYPE=FILE: rank 0 writes the dtype of the CTC head's output in training (what
  autocast really ran) to FILE;
- W2V_TEST_RAISE_AT_UPDATE=N: rank 0 raises RuntimeError when update N starts (a crash mid-epoch);
- W2V_TEST_DUMP_STATES=DIR: every rank saves its parameters, optimizer state and learning rate
  before and after each optimizer step to DIR/rank<R>-update<N>-<before|after>.pt.

The training loop itself carries no test code: the hooks replace its module-level steps.
"""

import json
import os
import signal
import sys

import torch

import train

NAN_UPDATE = int(os.environ.get("W2V_TEST_NAN_UPDATE", "-1"))
DUMP_GRADIENTS = os.environ.get("W2V_TEST_DUMP_GRADIENTS")
LOGITS_DTYPE = os.environ.get("W2V_TEST_LOGITS_DTYPE")
SIGNAL_AT = int(os.environ.get("W2V_TEST_SIGNAL_AT_UPDATE", "-1"))
RAISE_AT = int(os.environ.get("W2V_TEST_RAISE_AT_UPDATE", "-1"))
SIGNAL_TO = os.environ.get("W2V_TEST_SIGNAL_TO", "self")
SIGNAL = getattr(signal, os.environ.get("W2V_TEST_SIGNAL", "SIGTERM"))
SIGNAL_TIMES = int(os.environ.get("W2V_TEST_SIGNAL_TIMES", "1"))
DUMP_STATES = os.environ.get("W2V_TEST_DUMP_STATES")
update = -1  # the update whose window is being processed
real_next_window, real_loss, real_step = train.next_window, train.ctc_loss_sum, train.optimizer_step


def next_window(*args, **kwargs):
    global update
    update += 1
    if update == RAISE_AT and os.environ.get("RANK", "0") == "0":
        raise RuntimeError(f"W2V_TEST_RAISE_AT_UPDATE: update {update}")
    if update == SIGNAL_AT and os.environ.get("RANK", "0") == "0":
        for _ in range(SIGNAL_TIMES):
            os.kill(os.getppid() if SIGNAL_TO == "parent" else os.getpid(), SIGNAL)
    return real_next_window(*args, **kwargs)


def write_dtype(module, inputs, output):
    with open(LOGITS_DTYPE, "w") as handle:
        handle.write(str(output.dtype))


def ctc_loss_sum(model, batch, blank, accelerator, train_encoder):
    head = accelerator.unwrap_model(model).model.lm_head  # inside autocast (prepare() casts the outputs back)
    if LOGITS_DTYPE and accelerator.is_main_process and not head._forward_hooks:
        head.register_forward_hook(write_dtype)
    loss = real_loss(model, batch, blank, accelerator, train_encoder)
    if update == NAN_UPDATE and accelerator.is_main_process:
        loss = loss * float("nan")
    return loss


def training_state(accelerator, model, optimizer, scheduler) -> dict:
    return {"params": {n: p.detach().cpu().clone() for n, p in accelerator.unwrap_model(model).named_parameters()},
            "optimizer": {k: {n: v.detach().cpu().clone() if torch.is_tensor(v) else v for n, v in state.items()}
                          for k, state in optimizer.state_dict()["state"].items()},
            "lr": scheduler.get_last_lr()}


def optimizer_step(accelerator, model, optimizer, scheduler, *args, **kwargs):
    if update == 0 and DUMP_GRADIENTS and accelerator.is_main_process:
        grads = {n: p.grad.detach().float().cpu().clone()
                 for n, p in accelerator.unwrap_model(model).named_parameters() if p.grad is not None}
        torch.save(grads, DUMP_GRADIENTS)
        hf_model = accelerator.unwrap_model(model).model
        with open(f"{DUMP_GRADIENTS}.json", "w") as handle:  # what the run switched on in the model
            json.dump({"gradient_checkpointing": hf_model.is_gradient_checkpointing,
                       "layerdrop": hf_model.config.layerdrop}, handle)
    dump = f"{DUMP_STATES}/rank{accelerator.process_index}-update{update}" if DUMP_STATES else None
    if dump:
        torch.save(training_state(accelerator, model, optimizer, scheduler), f"{dump}-before.pt")
    step = real_step(accelerator, model, optimizer, scheduler, *args, **kwargs)
    if dump:
        torch.save(training_state(accelerator, model, optimizer, scheduler), f"{dump}-after.pt")
    return step


train.next_window, train.ctc_loss_sum, train.optimizer_step = next_window, ctc_loss_sum, optimizer_step

if __name__ == "__main__":
    from w2v.host_memory import use_tcmalloc

    use_tcmalloc()  # as train.py does
    sys.exit(train.run())
