-- Down of migration 000: there is none.
--
-- 000 creates migration_history and migration_progress, the record of every
-- migration applied to this database. Undoing it would erase that record
-- while leaving the schema it describes, so every later run would see a
-- database of unknown state. To start over, drop the database (or schema).
--
-- migrate:irreversible 000 is the tracking infrastructure: undoing it would delete migration_history, the record of everything applied; drop the database to start over

-- migrate:psql-only
DO $$ BEGIN RAISE EXCEPTION 'migration 000 is irreversible (see the comment in this file)'; END $$;
