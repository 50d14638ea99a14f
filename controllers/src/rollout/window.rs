//! Maintenance windows: a five-field cron schedule, a duration and an IANA time zone.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use cloudpillar_crds::MaintenanceWindow;
use croner::parser::CronParser;

/// Whether a window is open at `now`, and when that changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    /// Devices may start now.
    pub open: bool,
    /// When the window next opens (closed) or closes (open).
    pub changes_at: Option<DateTime<Utc>>,
}

/// A window the operator cannot read (bad schedule or time zone).
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// The schedule is not a cron expression croner accepts.
    #[error("maintenance window schedule {schedule:?} is not a valid cron expression")]
    Schedule {
        /// The schedule as written.
        schedule: String,
        /// Parser error.
        #[source]
        source: croner::errors::CronError,
    },
    /// The time zone is not in the IANA database.
    #[error("maintenance window time zone {0:?} is unknown")]
    TimeZone(String),
}

/// Evaluates `window` at `now`.
///
/// The window is open from each time the schedule fires until `duration` later. The schedule
/// is read as wall-clock time in the window's time zone, so `0 2 * * 6` means 02:00 local
/// time on Saturdays, also across daylight saving changes.
pub fn evaluate(
    window: &MaintenanceWindow,
    now: DateTime<Utc>,
) -> Result<WindowState, WindowError> {
    let zone = Tz::from_str(&window.time_zone)
        .map_err(|_| WindowError::TimeZone(window.time_zone.clone()))?;
    let cron = CronParser::new()
        .parse(&window.schedule)
        .map_err(|source| WindowError::Schedule {
            schedule: window.schedule.clone(),
            source,
        })?;
    let length = Duration::from(window.duration);
    let local = now.with_timezone(&zone);
    let schedule_error = |source| WindowError::Schedule {
        schedule: window.schedule.clone(),
        source,
    };

    let opened = cron.find_previous_occurrence(&local, true).ok();
    if let Some(start) = opened {
        let end = start.with_timezone(&Utc) + length;
        if now < end {
            return Ok(WindowState {
                open: true,
                changes_at: Some(end),
            });
        }
    }
    let next = cron
        .find_next_occurrence(&local, false)
        .map_err(schedule_error)?;
    Ok(WindowState {
        open: false,
        changes_at: Some(next.with_timezone(&Utc)),
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn window(schedule: &str, hours: u64, zone: &str) -> MaintenanceWindow {
        MaintenanceWindow {
            schedule: schedule.into(),
            duration: Duration::from_secs(hours * 3600).into(),
            time_zone: zone.into(),
        }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("valid date")
    }

    #[test]
    fn saturday_night_window_is_open_inside_and_closed_outside() {
        let w = window("0 2 * * 6", 4, "UTC");
        // 2026-12-05 is a Saturday.
        let inside = evaluate(&w, utc(2026, 12, 5, 3, 30)).expect("valid window");
        assert_eq!(
            inside,
            WindowState {
                open: true,
                changes_at: Some(utc(2026, 12, 5, 6, 0))
            }
        );
        let after = evaluate(&w, utc(2026, 12, 5, 6, 0)).expect("valid window");
        assert!(!after.open);
        assert_eq!(after.changes_at, Some(utc(2026, 12, 12, 2, 0)));
    }

    #[test]
    fn schedule_is_read_in_the_window_time_zone() {
        let w = window("0 2 * * *", 1, "Europe/Berlin");
        // 02:30 in Berlin in winter is 01:30 UTC.
        assert!(evaluate(&w, utc(2026, 12, 5, 1, 30)).expect("valid").open);
        assert!(!evaluate(&w, utc(2026, 12, 5, 2, 30)).expect("valid").open);
    }

    #[test]
    fn every_form_the_crd_schedule_rule_allows_is_read() {
        // The CRD validation test applies the same schedules to the API server.
        for schedule in cloudpillar_crds::rollout::SCHEDULE_EXAMPLES {
            let result = evaluate(&window(schedule, 1, "UTC"), utc(2026, 12, 5, 3, 30));
            assert!(result.is_ok(), "{schedule:?}: {result:?}");
        }
    }

    #[test]
    fn unknown_time_zone_is_an_error() {
        assert!(matches!(
            evaluate(
                &window("0 2 * * *", 1, "Mars/Olympus"),
                utc(2026, 1, 1, 0, 0)
            ),
            Err(WindowError::TimeZone(_))
        ));
    }
}
