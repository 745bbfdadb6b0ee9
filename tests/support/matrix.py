"""The version-matrix subset: the tests `-m matrix` runs on every supported PostgreSQL major.

One place, so the subset and the reason for each group are read together. The
conftest marks these tests `matrix`; a name listed here that its module no
longer has fails the collection (a rename must not drop a test silently).

What the subset must cover on each major: every migration path (a fresh
database, a legacy upgrade of 001 with data, by the runner and by psql, the
background steps: backfill, validation, index builds, 004's VACUUM), the
routines, and the runner's version-dependent SQL (pre-flight's catalog
queries, pg_stat_activity and pg_locks for lock holders and blockers,
pg_index for INVALID indexes, advisory locks, pg_terminate_backend, CREATE
INDEX CONCURRENTLY, date_bin in the plain OHLCV views). Run it with
`python -m tests.support.pg_matrix` (README, "Supported PostgreSQL versions").
"""

from __future__ import annotations

MATRIX_TESTS: dict[str, tuple[str, ...]] = {
    # 001 on a legacy database with data and on an empty one; psql and runner; the
    # background steps (backfill, validation, index builds), 004, the plain views.
    "tests/integration/migration_001/test_migration_001.py": (
        "test_split_function_follows_the_documented_rules",
        "test_legacy_and_empty_databases_reach_the_same_schema",
        "test_legacy_rows_are_split_deduplicated_and_all_accounted_for",
        "test_running_again_changes_nothing",
        "test_psql_file_gives_the_same_schema_as_the_runner",
        "test_backfill_resumes_after_its_session_is_killed",
        "test_trades_replayed_while_the_backfill_runs_are_archived",
        "test_legacy_rows_violating_a_constraint_are_kept_and_reported",
        "test_roles_are_created_and_granted",
        "test_plain_views_give_ohlcv_per_pair",
        "test_cli_applies_001_and_runs_its_background_part",
        "test_after_the_backfill_trades_is_vacuumed_and_analysed",
    ),
    # Routines: re-applied before pending steps; a database that ran the released 001.
    "tests/integration/runner/test_routines.py": (
        "test_database_that_ran_the_released_001_gets_new_bodies_and_finishes",
        "test_changed_routine_is_reapplied_before_pending_background_steps",
        "test_failed_routine_is_recorded_and_stops_the_run_before_migrations",
    ),
    # The runner's own SQL: history, steps, CIC and INVALID indexes, lock waits,
    # advisory locks, killed sessions, parallel sessions, pre-flight's catalog queries.
    "tests/integration/runner/test_runner.py": (
        "test_pending_migrations_are_applied_in_version_order",
        "test_sql_error_in_a_transactional_migration_rolls_it_back_entirely",
        "test_create_index_concurrently_works_in_a_non_transactional_step",
        "test_invalid_index_of_an_interrupted_concurrent_build_is_rebuilt_on_resume",
        "test_table_lock_held_past_lock_timeout_fails_after_retries",
        "test_advisory_lock_held_past_the_wait_timeout_names_the_holder",
        "test_connection_killed_in_a_non_transactional_step_resumes_where_it_stopped",
        "test_background_step_cut_off_resumes_where_it_stopped",
        "test_parallel_step_runs_on_the_configured_number_of_sessions",
        "test_notices_from_sql_are_passed_on_as_they_arrive",
        "test_status_shows_every_state_and_a_changed_checksum",
        "test_manual_psql_run_of_000_is_adopted_with_its_checksum",
        "test_missing_privilege_is_refused_by_preflight",
        "test_long_open_transaction_is_warned_about_with_its_pid",
    ),
    # pg_read_file of the host's /proc, EXECUTE and pg_read_server_files checks.
    "tests/integration/runner/test_preflight_writeback.py": (
        "test_the_server_hosts_settings_are_read_through_pg_read_file",
        "test_a_user_that_may_not_read_server_files_is_not_checked_and_not_refused",
    ),
    # The floor: a PostgreSQL 12 of its own is refused (runs in the 13 run only);
    # date_bin from R__compat_date_bin on 13 equals the built-in of 14+.
    "tests/integration/runner/test_server_versions.py": (
        "test_postgresql_12_is_refused_with_exit_7_and_nothing_is_created",
        "test_date_bin_is_the_same_on_every_major_built_in_or_from_the_routine",
    ),
    # Waiting runners and CREATE INDEX CONCURRENTLY (virtualxid waits in pg_locks).
    "tests/integration/runner/test_concurrency.py": (
        "test_waiting_runners_do_not_block_create_index_concurrently_in_the_holder",
    ),
    # The CLI as an operator runs it: fresh apply, status, lock holder, feature flags.
    "tests/integration/cli/test_cli.py": (
        "test_apply_records_every_migration_and_status_table_shows_it",
        "test_status_json_is_valid_json_with_every_field",
        "test_verbose_shows_config_source_server_extensions_user_but_never_the_password",
        "test_lock_held_elsewhere_exits_5_naming_the_holder",
        "test_trade_collection_off_skips_001_and_turning_it_on_applies_it",
    ),
    # Refusals and blockers named from pg_settings, pg_locks and pg_stat_activity.
    "tests/integration/cli/test_operator_runner.py": (
        "test_sigterm_cancels_the_running_step_rolls_back_and_exits_8",
        "test_read_only_database_is_refused_with_exit_7_naming_the_setting",
        "test_table_lock_timeout_names_the_blocking_session",
        "test_second_apply_names_the_background_runner_and_does_not_wait",
        "test_table_lock_timeout_error_carries_the_blocking_pids",
    ),
    # The engine: boot check, background steps after boot, writers, the OHLCV output.
    "tests/integration/engine/test_ensure_schema.py": (
        "test_first_boot_applies_and_second_boot_is_a_noop",
        "test_boot_check_takes_no_lock_when_nothing_is_pending",
        "test_background_steps_do_not_hold_up_boot",
    ),
    "tests/integration/engine/test_writers.py": (
        "test_replayed_trades_with_duplicates_land_once",
        "test_connection_killed_mid_batch_loses_and_doubles_nothing",
    ),
    "tests/integration/engine/test_engine_boot.py": (
        "test_run_replay_boots_migrates_ingests_and_prints_ohlcv",
    ),
}
