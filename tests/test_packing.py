"""n_jobs=auto: how many trials run at once, with how many threads, on which device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mnist_sweep.sweep.packing import Slot, fixed, plan


@pytest.mark.parametrize("cores", [1, 2, 3, 8, 16])
@pytest.mark.parametrize("threads", [0, 1, 2, 4])
def test_packed_cpu_trials_never_run_more_threads_than_cores(cores: int, threads: int) -> None:
    slots = plan(cores, threads, gpus=0, trials_per_device=4)
    assert all(slot.device is None for slot in slots)
    assert {slot.threads for slot in slots} == {threads or 1}
    if (threads or 1) <= cores:
        assert sum(slot.threads for slot in slots) <= cores
        assert len(slots) == cores // (threads or 1)  # and leave no whole trial's cores idle
    else:
        assert len(slots) == 1  # more threads asked than cores: one trial, as asked


def test_two_cores_run_two_one_thread_trials() -> None:
    assert plan(2, 0, 0, 1) == [Slot(1), Slot(1)]


def test_no_gpu_means_cpu_slots_whatever_trials_per_device() -> None:
    assert plan(4, 2, gpus=0, trials_per_device=8) == [Slot(2)] * 2


def test_one_gpu_takes_trials_per_device_trials_sharing_the_cores() -> None:
    assert plan(16, 0, gpus=1, trials_per_device=4) == [Slot(4, 0)] * 4


def test_several_gpus_take_trials_per_device_each_round_robin() -> None:
    slots = plan(16, 0, gpus=3, trials_per_device=2)
    assert [slot.device for slot in slots] == [0, 1, 2, 0, 1, 2]  # the first 3 use every GPU
    assert all(slot.threads == 2 for slot in slots)  # 16 cores // 6 trials
    for device in range(3):
        assert sum(slot.device == device for slot in slots) == 2


def test_more_gpu_trials_than_cores_get_one_thread_each() -> None:
    slots = plan(2, 0, gpus=2, trials_per_device=8)
    assert len(slots) == 16 and {slot.threads for slot in slots} == {1}


def test_a_whole_number_n_jobs_leaves_each_trial_its_settings() -> None:
    assert fixed(3) == [Slot(), Slot(), Slot()]
    assert Slot().overrides() == [] and Slot(2, 0).overrides() == ["trainer.num_threads=2"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_each_slot_names_a_visible_device_and_pins_it() -> None:
    from mnist_sweep.sweep.job import SweepJob, Told

    gpus = torch.cuda.device_count()
    slots = plan(torch.get_num_threads(), 0, gpus, trials_per_device=2)
    assert {slot.device for slot in slots} == set(range(gpus))
    for slot in slots:
        SweepJob(Told("sweep", "study", device=slot.device), "trial_0", 0, Path()).pin_device()
        assert torch.cuda.current_device() == slot.device
        assert torch.zeros(1, device="cuda").device.index == slot.device
