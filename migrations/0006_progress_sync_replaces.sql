-- A progress sync replaces the user's course set with what the platform answers: a course no
-- longer assigned upstream is removed, so it stops counting as assigned (and as stale input)
-- in readiness reports. Quiz submissions themselves are kept in quiz_submissions.
grant delete on course_progress to __APP_ROLE__;
