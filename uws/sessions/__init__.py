"""Sessions: the life cycle of a job, from the start request to its end.

service (JobService, what handlers call) · launch (starting one) · startwatch (a started
helper until it first reports) · stopping (stopping one) ·
record (the live record of an active job) · tracker (helper messages) · reconcile (checking
silent ones) · servicebase (what the service is given, and what those three use of it) ·
transitions (database changes of status) · status (the enums) · jobtypes, params (what may be
started, with what) · culler (idle sessions) · channel, protocol (the link to helpers) · helper,
helper_app, helper_link, proctree (the helper).

Imports nothing itself: the helper imports this package and must stay light.
"""
