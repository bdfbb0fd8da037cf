-- The LISTEN design's per-row trigger, with the room in the payload so the baseline can route
-- to rooms. One NOTIFY per row, at commit.
create or replace function bench_notify_data_change() returns trigger language plpgsql as $$
begin
  perform pg_notify('data_changes', json_build_object(
    'timestamp', current_timestamp,
    'operation', TG_OP,
    'schema', TG_TABLE_SCHEMA,
    'table', TG_TABLE_NAME,
    'id', NEW.id,
    'channel', NEW.channel,
    'data', row_to_json(NEW)
  )::text);
  return NEW;
end $$;

-- The same design on the multi-statement scenario's tables (bench/lib/writers.ts, oltp): one NOTIFY
-- per changed row, at commit, with the row; routed to the room 'oltp'.
create or replace function bench_notify_row_change() returns trigger language plpgsql as $$
begin
  perform pg_notify('data_changes', json_build_object(
    'timestamp', current_timestamp,
    'operation', TG_OP,
    'schema', TG_TABLE_SCHEMA,
    'table', TG_TABLE_NAME,
    'channel', 'oltp',
    'data', row_to_json(NEW)
  )::text);
  return NEW;
end $$;
