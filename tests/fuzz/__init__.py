from hypothesis import HealthCheck

#: Hypothesis settings every fuzz run shares (the "long" profile, checks.FUZZ)
COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
