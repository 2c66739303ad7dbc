"""Production operations: cron schedules, persistent state between scheduled runs, KFP recurring runs."""
