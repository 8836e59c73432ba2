-- The team readiness report of one tenant, as one jsonb value. Run inside the tenant's
-- scoped transaction (RLS applies on top of the explicit tenant filters).
--   $1: tenant id (text)   $2: freshness in milliseconds (float8)
-- Definitions: README "Readiness reports". Deactivated users and their progress are
-- excluded; rates and means are null where there is nothing to divide.
with active as (
    select user_id, manager_id
      from users
     where tenant_id = $1 and active
), progress as (
    select p.course_id, p.title, p.status, p.score, p.synced_at, a.manager_id
      from course_progress p
      join active a on a.user_id = p.user_id
     where p.tenant_id = $1
), totals as (
    select count(*) as assigned,
           count(*) filter (where status = 'completed') as completed,
           count(score) as scored,
           avg(score) as avg_score,
           min(synced_at) as oldest,
           max(synced_at) as newest,
           count(*) filter (where synced_at < now() - $2::float8 * interval '1 millisecond') as stale
      from progress
), courses as (
    select course_id, max(title) as title,
           count(*) as assigned,
           count(*) filter (where status = 'completed') as completed,
           count(score) as scored,
           avg(score) as avg_score
      from progress
     group by course_id
), managers as (
    -- Every active manager (even with no team) and every manager an active user reports to.
    select user_id as manager_id from users
     where tenant_id = $1 and active and role = 'manager'
    union
    select manager_id from active where manager_id is not null
), team_sizes as (
    select manager_id, count(*) as members
      from active where manager_id is not null
     group by manager_id
), team_progress as (
    select manager_id,
           count(*) as assigned,
           count(*) filter (where status = 'completed') as completed,
           count(score) as scored,
           avg(score) as avg_score
      from progress where manager_id is not null
     group by manager_id
), teams as (
    select m.manager_id, u.user_name,
           coalesce(s.members, 0) as members,
           coalesce(tp.assigned, 0) as assigned,
           coalesce(tp.completed, 0) as completed,
           coalesce(tp.scored, 0) as scored,
           tp.avg_score
      from managers m
      left join team_sizes s on s.manager_id = m.manager_id
      left join team_progress tp on tp.manager_id = m.manager_id
      left join users u on u.tenant_id = $1 and u.user_id = m.manager_id
)
select jsonb_build_object(
    'tenantId', $1::text,
    'computedAt', now(),
    'inputsAsOf', t.oldest,
    'newestInputAt', t.newest,
    'freshnessMs', $2::float8::bigint,
    'activeUsers', (select count(*) from active),
    'assigned', t.assigned,
    'completed', t.completed,
    'scored', t.scored,
    'avgScore', t.avg_score,
    'completionRate', t.completed::float8 / nullif(t.assigned, 0),
    'staleProgressRows', t.stale,
    'pendingSyncJobs', (select count(*) from upstream_jobs j
                         where j.tenant_id = $1 and j.status = 'pending'
                           and j.kind = 'sync_progress'),
    'byCourse', coalesce((
        select jsonb_agg(jsonb_build_object(
                   'courseId', c.course_id, 'title', c.title,
                   'assigned', c.assigned, 'completed', c.completed, 'scored', c.scored,
                   'avgScore', c.avg_score,
                   'completionRate', c.completed::float8 / nullif(c.assigned, 0))
               order by c.course_id)
          from courses c), '[]'::jsonb),
    'byTeam', coalesce((
        select jsonb_agg(jsonb_build_object(
                   'managerId', tm.manager_id, 'managerUserName', tm.user_name,
                   'teamSize', tm.members,
                   'assigned', tm.assigned, 'completed', tm.completed, 'scored', tm.scored,
                   'avgScore', tm.avg_score,
                   'completionRate', tm.completed::float8 / nullif(tm.assigned, 0))
               order by tm.manager_id)
          from teams tm), '[]'::jsonb)
)
from totals t
