# One line per test executable.
outbox_unit_test(test_dispatcher)
outbox_integration_test(test_harness)
outbox_unit_test(test_validate)
outbox_integration_test(test_broker_nats)
outbox_unit_test(test_config)
target_compile_definitions(test_config PRIVATE OUTBOX_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
outbox_integration_test(test_relay_e2e)
outbox_integration_test(test_store_pg)
outbox_integration_test(test_enqueue_pg)
outbox_unit_test(test_stats)
outbox_integration_test(test_supervisor)
target_link_libraries(test_supervisor PRIVATE PkgConfig::JANSSON)
outbox_integration_test(test_delivery)
if(OUTBOX_FAULT_INJECTION)
  target_compile_definitions(test_delivery PRIVATE OUTBOX_FAULT_INJECTION)
endif()
outbox_unit_test(test_bench)
target_link_libraries(test_bench PRIVATE outboxbench_core)

# outboxbench --smoke (label bench): every benchmark command, tiny sizes, a few
# seconds, against the fixture's servers; fails when a message goes missing or a
# figure is not sane, so CI notices a broken benchmark.
add_test(NAME bench.smoke
  COMMAND /bin/sh -c [=[. "$OUTBOX_TESTENV/env" && exec "$0" --quiet --db "$OUTBOX_TEST_DB" --nats "$OUTBOX_TEST_NATS" --smoke]=]
          $<TARGET_FILE:outboxbench>)
set_tests_properties(bench.smoke PROPERTIES LABELS bench TIMEOUT 300 FIXTURES_REQUIRED servers
  ENVIRONMENT "OUTBOX_TESTENV=${OUTBOX_TESTENV}")
