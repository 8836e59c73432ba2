-- The team readiness report of one tenant, as one jsonb value. Run inside the tenant's
-- scoped transaction (RLS applies on top of the explicit tenant filters).
--   $1: tenant id (text)   $2: freshness in milliseconds (float8)
-- Definitions: README "Readiness reports". Deactivated users and their progress are
-- excluded; rates and means are null where there is nothing to divide. `byGroup`: per SCIM
-- group (the provider's Groups), beside `byTeam` (per enterprise manager).
with active as not materialized (
    select user_id, manager_id
      from users
     where tenant_id = $1 and active
), cells as (
    -- One pass over the tenant's progress joined to its active users, one group per
    -- (course, manager): a million rows become at most courses x managers cells.
    select p.course_id, a.manager_id,
           count(*) as assigned,
           count(*) filter (where p.status = 'completed') as completed,
           count(p.score) as scored,
           sum(p.score) as score_sum,
           min(p.title) as title,
           min(p.synced_at) as oldest,
           max(p.synced_at) as newest,
           count(*) filter (where p.synced_at < (select now() - $2::float8 * interval '1 millisecond')) as stale
      from course_progress p
      join active a on a.user_id = p.user_id
     where p.tenant_id = $1
     group by p.course_id, a.manager_id
), slices as (
    -- The cells rolled up three ways at once: the whole tenant, per course, per manager.
    select grouping(course_id) = 0 as per_course,
           grouping(manager_id) = 0 as per_team,
           course_id, manager_id,
           coalesce(sum(assigned), 0)::bigint as assigned,
           coalesce(sum(completed), 0)::bigint as completed,
           coalesce(sum(scored), 0)::bigint as scored,
           sum(score_sum) / nullif(sum(scored), 0) as avg_score,
           min(title) as title,
           min(oldest) as oldest,
           max(newest) as newest,
           coalesce(sum(stale), 0)::bigint as stale
      from cells
     group by grouping sets ((), (course_id), (manager_id))
), totals as (
    select * from slices where not per_course and not per_team
), courses as (
    select * from slices where per_course
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
), teams as (
    select m.manager_id, u.user_name,
           coalesce(ts.members, 0) as members,
           coalesce(s.assigned, 0) as assigned,
           coalesce(s.completed, 0) as completed,
           coalesce(s.scored, 0) as scored,
           s.avg_score
      from managers m
      left join team_sizes ts on ts.manager_id = m.manager_id
      left join slices s on s.per_team and s.manager_id = m.manager_id
      left join users u on u.tenant_id = $1 and u.user_id = m.manager_id
), group_figures as (
    -- Per SCIM group: its active members' progress rows (a user in two groups counts in
    -- both; the tenant totals count each row once).
    select gm.group_id,
           count(distinct a.user_id) as members,
           count(p.course_id) as assigned,
           count(p.course_id) filter (where p.status = 'completed') as completed,
           count(p.score) as scored,
           avg(p.score) as avg_score
      from scim_group_members gm
      join active a on a.user_id = gm.user_id
      left join course_progress p on p.tenant_id = $1 and p.user_id = gm.user_id
     where gm.tenant_id = $1
     group by gm.group_id
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
          from teams tm), '[]'::jsonb),
    'byGroup', coalesce((
        select jsonb_agg(jsonb_build_object(
                   'groupId', g.group_id, 'displayName', g.display_name,
                   'members', coalesce(gf.members, 0),
                   'assigned', coalesce(gf.assigned, 0),
                   'completed', coalesce(gf.completed, 0),
                   'scored', coalesce(gf.scored, 0),
                   'avgScore', gf.avg_score,
                   'completionRate', gf.completed::float8 / nullif(gf.assigned, 0))
               order by g.group_id)
          from scim_groups g
          left join group_figures gf on gf.group_id = g.group_id
         where g.tenant_id = $1), '[]'::jsonb)
)
from totals t
