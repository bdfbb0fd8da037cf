-- A login role for the relay with only what it needs, and nothing more. Run it as the owner of
-- the realtime schema (the role that ran sql/realtime.sql), after installing:
--   psql "$ADMIN_DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/relay-role.sql
--   psql "$ADMIN_DATABASE_URL" -c "alter role realtime_relay password '<a long random password>'"
-- then run the relay with DATABASE_URL=postgres://realtime_relay:<password>@host/db.
--
-- What the relay does, and the grant it takes:
--   read the outbox in commit order, prune delivered rows   select, delete on realtime.outbox
--   prefix event ids with the installation id              select on realtime.installation
--   keep its cursor                                        select, insert, update on realtime.cursors
--   tell writers when to ring the doorbell                 select, insert, update on realtime.doorbells
--   remember the channels it delivered to                  select, insert on realtime.channels
--   (slot sources) a lost slot: a new epoch, rows again    select, insert, update on realtime.slot_epochs,
--                                                          execute on realtime.recapture_retained()
--   (publication source) route the tables' own changes     select on realtime.watches
--   LISTEN, advisory locks, pg_current_snapshot()          (no grant needed)
-- It needs CONNECT on the database (PUBLIC has it unless revoked) and nothing on your tables:
-- changes reach the outbox through the capture triggers, which run as the writer.
--
-- With --source wal (README, "Capture to the WAL") the relay also streams a replication slot,
-- which needs the REPLICATION attribute, and on its first start creates the publication and the
-- slot and switches capture, which need the schema's owner. Either run that first start as the
-- owner, or run its three statements as the owner once and then:
--   alter role realtime_relay replication;
do $$
begin
  if not exists (select from pg_roles where rolname = 'realtime_relay') then
    create role realtime_relay login;
  end if;
end $$;

grant usage on schema realtime to realtime_relay;
grant select, delete on realtime.outbox to realtime_relay;
grant select on realtime.installation to realtime_relay;
grant select, insert, update on realtime.cursors to realtime_relay;
grant select, insert, update on realtime.doorbells to realtime_relay;
grant select, insert on realtime.channels to realtime_relay;
grant select, insert, update on realtime.slot_epochs to realtime_relay;
grant execute on function realtime.recapture_retained() to realtime_relay;
grant select on realtime.watches to realtime_relay;
