package events

// ComparePaths exposes the field path order to the external tests.
var ComparePaths = comparePaths
