-- pg-edge-realtime: change capture for Postgres.
--
-- Install (idempotent: running it again changes nothing, and keeps watches and cursors):
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/realtime.sql
-- or `npx pg-edge-realtime install`.
--
-- What it creates, all in schema `realtime`:
--   outbox            the durable log the relay reads in commit order
--   watch(table, …)   capture INSERT/UPDATE/DELETE of a table into the outbox
--   unwatch(table)    stop capturing
--   publish(…)        write an application event into the outbox
--   cursors, doorbells the relays' own state
-- Requires PostgreSQL 13 or later (xid8, pg_snapshot).

-- "already exists, skipping" notices would be noise on every re-install.
set client_min_messages = warning;

create schema if not exists realtime;

-- One row per installation: the install id makes event ids unique across databases, so a
-- Worker never mistakes a fresh database's event 1 for an old one (it would drop it as a duplicate).
create table if not exists realtime.installation (
  singleton boolean primary key default true check (singleton),
  install_id text not null default substr(md5(random()::text || clock_timestamp()::text), 1, 12),
  installed_at timestamptz not null default now()
);
insert into realtime.installation default values on conflict do nothing;
-- Where captured events go: 'outbox' (rows of realtime.outbox, the default) or 'wal' (transactional
-- logical decoding messages, read by a relay started with --source wal over a replication slot).
-- Change it with realtime.set_capture(), never by hand: the capture functions are generated for it.
alter table realtime.installation add column if not exists capture text not null default 'outbox';
do $$
begin
  if not exists (select from pg_constraint where conname = 'installation_capture_valid') then
    alter table realtime.installation add constraint installation_capture_valid check (capture in ('outbox', 'wal'));
  end if;
end $$;

-- The outbox. `xid` is the writing transaction's id: the relay delivers rows in the order their
-- transactions became visible (PgQ's snapshot batches, see relay/outbox.ts), not in id order,
-- because ids are taken before commit and a transaction can commit after one with a larger id.
create table if not exists realtime.outbox (
  id bigint generated always as identity primary key,
  xid xid8 not null default pg_current_xact_id(),
  channel text not null,
  event text not null,
  -- json, not jsonb: nothing queries inside it, and building json is cheaper for writers.
  payload json not null default 'null',
  created_at timestamptz not null default now(),
  -- The event's row is kept as the channel's retained state (watch(..., retain => true)).
  retain boolean not null default false,
  -- The same rules as protocol/wire.ts: a bad name fails the writing statement here instead of
  -- reaching the Worker, which would refuse the batch and stop delivery behind it.
  constraint outbox_channel_valid check (channel ~ '^[A-Za-z0-9_.:@-]{1,128}$'),
  constraint outbox_event_valid check (event ~ '^[A-Za-z0-9_.:-]{1,64}$')
);
create index if not exists outbox_xid on realtime.outbox (xid);
alter table realtime.outbox add column if not exists retain boolean not null default false;
-- Installs from before payload became json are converted (the capture functions are regenerated
-- at the end of this script).
do $$
begin
  if (select atttypid from pg_attribute where attrelid = 'realtime.outbox'::regclass and attname = 'payload') = 'jsonb'::regtype then
    alter table realtime.outbox alter column payload drop default;
    alter table realtime.outbox alter column payload type json using payload::json;
    alter table realtime.outbox alter column payload set default 'null';
  end if;
end $$;

-- Where each relay has got to: the last snapshot whose events were acknowledged (`done`), and,
-- while a snapshot window is being shipped in pages, its upper snapshot and the last id sent.
create table if not exists realtime.cursors (
  name text primary key,
  done pg_snapshot not null,
  target pg_snapshot,
  after_id bigint,
  updated_at timestamptz not null default now()
);

-- The doorbell. A NOTIFY at commit takes a cluster-wide lock (PreCommit_Notify in
-- src/backend/commands/async.c), which serialized 16 writers from 14.7k to 3.5k commits/s here.
-- So writers ring only when a relay says it is idle (`waiting`, one row per relay cursor: a
-- partitioned deployment has several): an idle relay wakes within a millisecond of a commit, and
-- busy relays (which loop without sleeping) cost writers one read of this small table. A ring can
-- be missed only by a transaction that read `waiting` just before the relay set it; the relay's
-- poll interval bounds that delay.
create table if not exists realtime.doorbells (
  name text primary key,
  waiting boolean not null default false
);
-- Before 0.2 there was one doorbell for one relay.
drop table if exists realtime.doorbell;

-- Tables under watch and how their events are routed.
create table if not exists realtime.watches (
  tbl regclass primary key,
  channel text not null,
  key_columns text[] not null,
  capture_function text not null,
  created_at timestamptz not null default now()
);
alter table realtime.watches add column if not exists retain boolean not null default false;
-- watch() gained a parameter; the old signature would make calls ambiguous.
drop function if exists realtime.watch(regclass, text);

create or replace function realtime.ring() returns void
language plpgsql as $$
begin
  if exists (select from realtime.doorbells where waiting) then
    perform pg_notify('realtime_doorbell', '');
  end if;
end $$;

-- In 'wal' capture a channel name is checked here (the outbox's check constraint does it in
-- 'outbox' capture): a bad name fails the writing statement instead of stopping delivery behind it.
create or replace function realtime.invalid_channel(channel text) returns text
language plpgsql immutable as $$
begin
  raise exception 'realtime: channel % is not a valid channel name', coalesce(quote_literal(channel), 'NULL')
    using hint = 'Channel names are 1-128 of A-Z a-z 0-9 _ . : @ -', errcode = '23514';
end $$;

-- The statement that writes one event per row of `query` (columns channel, event, payload,
-- retain, in the order the events must be delivered) to where `capture` says:
--   outbox  an insert into realtime.outbox;
--   wal     one transactional logical decoding message per row, prefix 'realtime', content
--           "<channel>\n<event>\n<1 or 0: retain>\n<payload json>" (relay/wal.ts reads it).
--           Decoding hands messages over in commit order, so the relay needs no snapshots,
--           cursor rows or doorbell, and writers write no second row: that is what makes it
--           cheaper for them.
-- The subquery keeps `query`'s order: a subquery with ORDER BY is not flattened into its caller.
-- `keyword` is 'perform' for a statement in plpgsql, 'select' for a query (in a CTE: it returns a
-- row per event).
create or replace function realtime.sink_sql(query text, capture text, keyword text default 'perform') returns text
language sql immutable as $$
  select case capture
    when 'wal' then
      keyword || ' pg_logical_emit_message(true, ''realtime'', '
        || '(case when e.channel ~ ''^[A-Za-z0-9_.:@-]{1,128}$'' then e.channel else realtime.invalid_channel(e.channel) end)'
        || ' || E''\n'' || e.event || E''\n'' || (case when e.retain::boolean then ''1'' else ''0'' end) || E''\n'' || e.payload::text)'
        || ' from (' || query || ') e(channel, event, payload, retain)'
    else 'insert into realtime.outbox (channel, event, payload, retain) ' || query || case when keyword = 'select' then ' returning 1' else '' end
  end
$$;

-- Switches where captured events go ('outbox' or 'wal', see realtime.installation.capture) and
-- regenerates every watch's capture function. A relay started with --source wal calls it once
-- its replication slot exists: an event written in 'wal' capture while no slot exists is lost,
-- so switching to 'wal' requires one.
create or replace function realtime.set_capture(mode text) returns void
language plpgsql as $$
begin
  if mode is null or mode not in ('outbox', 'wal') then
    raise exception 'realtime.set_capture: % is not a capture mode', coalesce(quote_literal(mode), 'NULL')
      using hint = 'Use ''outbox'' or ''wal''', errcode = '22023';
  end if;
  if mode = 'wal' then
    if current_setting('wal_level') <> 'logical' then
      raise exception 'realtime.set_capture: wal capture needs wal_level = logical, and it is %', current_setting('wal_level')
        using hint = 'Run ALTER SYSTEM SET wal_level = logical and restart Postgres (on a managed database: turn on its logical replication setting)', errcode = '55000';
    end if;
    if not exists (select from pg_replication_slots where database = current_database() and plugin = 'pgoutput' and slot_name like 'realtime%') then
      raise exception 'realtime.set_capture: this database has no relay replication slot, so wal events would be lost'
        using hint = 'Start the relay with --source wal: it creates its slot, then switches capture itself', errcode = '55000';
    end if;
  end if;
  update realtime.installation set capture = mode where capture is distinct from mode;
  perform realtime.watch(w.tbl, w.channel, w.retain) from realtime.watches w;
end $$;

-- Publishes an application event. Returns the outbox id in 'outbox' capture; null in 'wal'
-- capture, where the event's id is its message's position in the WAL, which the relay reads.
create or replace function realtime.publish(channel text, event text, payload jsonb default 'null')
returns bigint
language plpgsql as $$
declare
  new_id bigint;
begin
  if channel is null or channel !~ '^[A-Za-z0-9_.:@-]{1,128}$' then
    raise exception 'realtime.publish: channel % is not a valid channel name', coalesce(quote_literal(channel), 'NULL')
      using hint = 'Channel names are 1-128 of A-Z a-z 0-9 _ . : @ -', errcode = '22023';
  end if;
  if event is null or event !~ '^[A-Za-z0-9_.:-]{1,64}$' then
    raise exception 'realtime.publish: event % is not a valid event name', coalesce(quote_literal(event), 'NULL')
      using hint = 'Event names are 1-64 of A-Z a-z 0-9 _ . : -', errcode = '22023';
  end if;
  if (select capture from realtime.installation) = 'wal' then
    perform pg_logical_emit_message(true, 'realtime', channel || E'\n' || event || E'\n0\n' || coalesce(payload, 'null')::text);
    return null;
  end if;
  insert into realtime.outbox (channel, event, payload) values (channel, event, coalesce(payload, 'null')::json)
    returning id into new_id;
  perform realtime.ring();
  return new_id;
end $$;

-- A template value that is NULL cannot name a channel: fail the statement with a clear message.
create or replace function realtime.template_value(value text, column_name text, tbl text)
returns text
language plpgsql immutable as $$
begin
  if value is null then
    raise exception 'realtime: column %.% is NULL, but the channel template of its watch needs it', tbl, column_name
      using hint = 'Make the column NOT NULL, or watch the table with a template that does not use it', errcode = '23502';
  end if;
  return value;
end $$;

-- Turns a channel template ('todos', 'tenant:{tenant_id}') into a SQL expression over the
-- row alias `alias`. Placeholders name columns; their text values are spliced in.
create or replace function realtime.channel_expression(tbl regclass, template text, alias text)
returns text
language plpgsql stable as $$
declare
  expr text := '';
  rest text := template;
  m text[];
  col text;
begin
  if template is null or template = '' then
    raise exception 'realtime.watch: channel template must not be empty' using errcode = '22023';
  end if;
  if template !~ '^([A-Za-z0-9_.:@-]|\{[^{}]+\})+$' then
    raise exception 'realtime.watch: channel template % is not valid', quote_literal(template)
      using hint = 'Channel names are 1-128 of A-Z a-z 0-9 _ . : @ -, plus {column} placeholders', errcode = '22023';
  end if;
  loop
    m := regexp_match(rest, '^(.*?)\{([^{}]+)\}(.*)$');
    exit when m is null;
    col := m[2];
    if not exists (select 1 from pg_attribute where attrelid = tbl and attname = col and attnum > 0 and not attisdropped) then
      raise exception 'realtime.watch: channel template % names column %, which % does not have', quote_literal(template), quote_ident(col), tbl
        using errcode = '42703';
    end if;
    if (select attnotnull from pg_attribute where attrelid = tbl and attname = col) then
      -- A NOT NULL column needs no NULL check (a function call per row saved).
      expr := expr || quote_literal(m[1]) || ' || ' || alias || '.' || quote_ident(col) || '::text || ';
    else
      expr := expr || quote_literal(m[1]) || ' || realtime.template_value(' || alias || '.' || quote_ident(col) || '::text, '
        || quote_literal(col) || ', ' || quote_literal(tbl::text) || ') || ';
    end if;
    rest := m[3];
  end loop;
  return expr || quote_literal(rest);
end $$;

-- Drops the capture triggers watch() created on `tbl` (only those that exist: no notices).
create or replace function realtime.drop_capture_triggers(tbl regclass)
returns void
language plpgsql as $$
declare
  t name;
begin
  for t in select tgname from pg_trigger where tgrelid = tbl and tgname like 'realtime\_capture\_%' loop
    execute format('drop trigger %I on %s', t, tbl);
  end loop;
end $$;

-- Captures INSERT, UPDATE, DELETE (and TRUNCATE, for a template without placeholders) of `tbl`
-- into the outbox, routed to `channel` (a name, or a template such as 'tenant:{tenant_id}';
-- default: the table's name). Change events carry {op, schema, table, key, new, old} under the
-- event names insert, update, delete, truncate. An update that changes the key, or moves the
-- row to another channel, is delivered as a delete (old key, old channel) then an insert (new
-- key, new channel): a subscriber of the old channel never sees the row's new contents.
-- With retain => true the channel keeps the latest version of every row (its retained state),
-- sent to each new subscriber as a snapshot; realtime.backfill(table) seeds it with the rows the
-- table already has. Statement-level triggers with transition tables: 179k rows/s against 131k
-- for row triggers on 1000-row inserts, measured here. Calling watch() again replaces the
-- previous watch.
create or replace function realtime.watch(tbl regclass, channel text default null, retain boolean default false)
returns void
language plpgsql as $$
declare
  rel record;
  template text;
  keys text[];
  fn text;
  key_new text;
  key_old text;
  key_nj text;
  key_oj text;
  join_on text;
  head text;
  q_insert text;
  q_delete text;
  q_update text;
  q_truncate text;
  capture text;
  ring text;
begin
  select c.relname, n.nspname, c.relkind into rel
    from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = tbl;
  if rel.relkind not in ('r', 'p') then
    raise exception 'realtime.watch: % is not a table', tbl using errcode = '42809';
  end if;
  template := coalesce(channel, rel.relname);
  select array_agg(a.attname::text order by array_position(i.indkey::int2[], a.attnum))
    into keys
    from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
    where i.indrelid = tbl and i.indisprimary;
  if keys is null then
    raise exception 'realtime.watch: % has no primary key', tbl
      using hint = 'Change events identify rows by primary key: add one (alter table ... add primary key (...))',
            errcode = '42P10';
  end if;
  fn := 'capture_' || tbl::oid;

  select 'json_build_object(' || string_agg(format('%L, n.%I', k, k), ', ') || ')',
         'json_build_object(' || string_agg(format('%L, o.%I', k, k), ', ') || ')',
         'json_build_object(' || string_agg(format('%L, nj -> %L', k, k), ', ') || ')',
         'json_build_object(' || string_agg(format('%L, oj -> %L', k, k), ', ') || ')',
         string_agg(format('o.%I = n.%I', k, k), ' and ')
    into key_new, key_old, key_nj, key_oj, join_on
    from unnest(keys) k;
  head := format('%L, %L, %L, %L', 'schema', rel.nspname, 'table', rel.relname);

  -- The four statements' queries: (channel, event, payload, retain) rows in delivery order.
  q_insert := format($q$
          select %1$s, 'insert', json_build_object('op', 'INSERT', %2$s, 'key', %3$s, 'new', to_json(n.*), 'old', null), %4$L
            from new_rows n$q$,
    realtime.channel_expression(tbl, template, 'n'), head, key_new, coalesce(watch.retain, false));
  q_delete := format($q$
          select %1$s, 'delete', json_build_object('op', 'DELETE', %2$s, 'key', %3$s, 'new', null, 'old', to_json(o.*)), %4$L
            from old_rows o$q$,
    realtime.channel_expression(tbl, template, 'o'), head, key_old, coalesce(watch.retain, false));
  -- `to_json(n.*)`, never `to_json(n)`: a table may have a column named n.
  -- Pair old and new rows by key. nc/oc (the new and old row's channel) are NULL exactly
  -- when that side is missing, since a template never yields NULL.
  q_update := format($q$
          with j as (
            select to_json(n.*) as nj, to_json(o.*) as oj,
                   case when n.%5$I is null then null else %1$s end as nc,
                   case when o.%5$I is null then null else %2$s end as oc
              from new_rows n full join old_rows o on %6$s
          )
          select channel, event, payload, %7$L from (
            select oc as channel, 'delete' as event, 0 as phase,
                   json_build_object('op', 'DELETE', %3$s, 'key', %4$s, 'new', null, 'old', oj) as payload
              from j where oc is not null and oc is distinct from nc
            union all
            select nc, 'update', 1,
                   json_build_object('op', 'UPDATE', %3$s, 'key', %8$s, 'new', nj, 'old', oj)
              from j where nc = oc
            union all
            select nc, 'insert', 2,
                   json_build_object('op', 'INSERT', %3$s, 'key', %8$s, 'new', nj, 'old', null)
              from j where nc is not null and nc is distinct from oc
          ) changes
          order by phase$q$,
    realtime.channel_expression(tbl, template, 'n'), realtime.channel_expression(tbl, template, 'o'),
    head, key_oj, keys[1], join_on, coalesce(watch.retain, false), key_nj);
  q_truncate := format($q$
          select %1$L, 'truncate', json_build_object('op', 'TRUNCATE', %2$s, 'key', '{}'::json, 'new', null, 'old', null), %3$L$q$,
    template, head, coalesce(watch.retain, false));
  select i.capture into capture from realtime.installation i;
  -- Outbox capture rings the doorbell of an idle relay (realtime.ring(), inlined: a nested
  -- function call was a sixth of this trigger's time); wal capture needs none, decoding streams.
  ring := case when capture = 'wal' then '' else $r$
      get diagnostics affected = row_count;
      if affected > 0 and exists (select from realtime.doorbells where waiting) then
        perform pg_notify('realtime_doorbell', '');
      end if;$r$ end;

  -- One generated function per table, so every statement in it is planned once and cached
  -- (a generic function would EXECUTE dynamic SQL and re-plan on every write).
  execute format($f$
    create or replace function realtime.%1$I() returns trigger language plpgsql as $body$
    declare
      affected bigint;
    begin
      if TG_OP = 'INSERT' then
        %2$s;
      elsif TG_OP = 'DELETE' then
        %3$s;
      elsif TG_OP = 'UPDATE' then
        %4$s;
      else
        %5$s;
      end if;%6$s
      return null;
    end $body$
  $f$,
    fn, realtime.sink_sql(q_insert, capture), realtime.sink_sql(q_delete, capture), realtime.sink_sql(q_update, capture),
    realtime.sink_sql(q_truncate, capture), ring);

  perform realtime.drop_capture_triggers(tbl);
  execute format('create trigger realtime_capture_insert after insert on %s referencing new table as new_rows for each statement execute function realtime.%I()', tbl, fn);
  execute format('create trigger realtime_capture_update after update on %s referencing old table as old_rows new table as new_rows for each statement execute function realtime.%I()', tbl, fn);
  execute format('create trigger realtime_capture_delete after delete on %s referencing old table as old_rows for each statement execute function realtime.%I()', tbl, fn);
  if position('{' in template) = 0 then
    execute format('create trigger realtime_capture_truncate after truncate on %s for each statement execute function realtime.%I()', tbl, fn);
  end if;

  insert into realtime.watches (tbl, channel, key_columns, capture_function, retain)
    values (tbl, template, keys, fn, coalesce(watch.retain, false))
    on conflict on constraint watches_pkey do update
      set channel = excluded.channel, key_columns = excluded.key_columns, capture_function = excluded.capture_function, retain = excluded.retain;
end $$;

-- Writes every current row of a watched table into the outbox as an `insert` event (its payload
-- marked "backfill": true), through the same path as live changes: a retaining channel's state
-- is seeded with them, and subscribers see them in order with everything else. Returns the number
-- of rows. One statement: for a very large table, call it in a quiet moment.
create or replace function realtime.backfill(tbl regclass)
returns bigint
language plpgsql as $$
declare
  after json;
  page_rows bigint;
  total bigint := 0;
begin
  loop
    select p.last_key, p.written into after, page_rows from realtime.backfill_page(tbl, after, 10000) p;
    exit when after is null;
    total := total + page_rows;
  end loop;
  return total;
end $$;

-- One page of a backfill, for callers that want progress (the CLI's `backfill` command): writes
-- up to `page_size` rows whose key comes after `after` (null: from the start), in key order, and
-- returns the last key written as json (null when there is nothing left) and the rows written.
drop function if exists realtime.backfill_page(regclass, json, int);
create function realtime.backfill_page(tbl regclass, after json, page_size int, out last_key json, out written bigint)
language plpgsql as $$
declare
  w record;
  rel record;
  key_new text;
  key_cols text;
  key_after text;
begin
  select * into w from realtime.watches x where x.tbl = backfill_page.tbl;
  if not found then
    raise exception 'realtime.backfill_page: % is not watched', tbl
      using hint = 'Call realtime.watch(' || quote_literal(tbl::text) || ') first', errcode = '55000';
  end if;
  select c.relname, n.nspname into rel from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = tbl;
  select 'json_build_object(' || string_agg(format('%L, n.%I', k, k), ', ') || ')',
         string_agg(format('n.%I', k), ', '),
         string_agg(format('($1 ->> %L)::%s', k, format_type(a.atttypid, a.atttypmod)), ', ')
    into key_new, key_cols, key_after
    from unnest(w.key_columns) k join pg_attribute a on a.attrelid = tbl and a.attname = k;
  execute format(
    $f$with page as (
         select * from %s n where $1 is null or row(%s) > row(%s) order by %s limit $2
       ), written as (
         %s
       )
       select (select %s from page n order by %s desc limit 1), count(*) from written having count(*) > 0$f$,
    tbl, key_cols, key_after, key_cols,
    realtime.sink_sql(format($q$select %s, 'insert', json_build_object('op', 'INSERT', 'schema', %L, 'table', %L, 'key', %s, 'new', to_json(n.*), 'old', null, 'backfill', true), %L
         from page n order by %s$q$,
      realtime.channel_expression(tbl, w.channel, 'n'), rel.nspname, rel.relname, key_new, w.retain, key_cols),
      (select i.capture from realtime.installation i), 'select'),
    key_new, replace(key_cols, ', ', ' desc, '))
    into last_key, written using after, page_size;
  written := coalesce(written, 0);
  if written > 0 then
    perform realtime.ring();
  end if;
end $$;

-- Stops capturing changes of `tbl`. Events already in the outbox are still delivered.
create or replace function realtime.unwatch(tbl regclass)
returns void
language plpgsql as $$
declare
  fn text;
begin
  select capture_function into fn from realtime.watches w where w.tbl = unwatch.tbl;
  perform realtime.drop_capture_triggers(tbl);
  if fn is not null then
    execute format('drop function if exists realtime.%I()', fn);
  end if;
  delete from realtime.watches w where w.tbl = unwatch.tbl;
end $$;

-- Regenerate every watch's capture function with this version's generator (an upgrade path;
-- on an unchanged install it recreates identical functions).
do $$
begin
  perform realtime.watch(w.tbl, w.channel, w.retain) from realtime.watches w;
end $$;

reset client_min_messages;
