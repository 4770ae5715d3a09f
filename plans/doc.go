// Package plans defines the migration plan document that `mtls-migrate plan`
// writes and `mtls-migrate apply` executes: a versioned YAML file
// (apiVersion mtls-migrate.io/v1alpha1, kind MigrationPlan) that a person
// reviews in git before anything changes in the cluster.
//
// Loading is strict: an unknown or misspelled field is an error naming its
// line, and validation errors name the line and the field too, so a typo in a
// reviewed plan can never silently change what apply does. Saving uses a fixed
// field order so that the same plan always serialises to the same bytes.
package plans
