# One line per test executable.
outbox_unit_test(test_dispatcher)
