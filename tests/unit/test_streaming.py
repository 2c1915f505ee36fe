from slime_rl.rollout.streaming import admission_capacity


def test_admission_capacity_allows_eta_plus_one_batches_ahead_at_version_zero():
    # (eta + version + 1) * batch - (accepted + running) = (1 + 0 + 1) * 4 - 0
    assert admission_capacity(max_staleness=1, version=0, batch_groups=4, accepted=0, running=0) == 8


def test_admission_capacity_counts_running_and_accepted_groups():
    # (2 + 3 + 1) * 4 - (17 + 5) = 24 - 22
    assert admission_capacity(max_staleness=2, version=3, batch_groups=4, accepted=17, running=5) == 2


def test_admission_capacity_is_negative_when_generation_runs_ahead_of_the_trainer():
    # (0 + 1 + 1) * 4 - (8 + 1) = -1
    assert admission_capacity(max_staleness=0, version=1, batch_groups=4, accepted=8, running=1) == -1
