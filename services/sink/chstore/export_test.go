package chstore

// ClusterMigrationsDDL exposes clusterMigrationsDDL to the external tests.
var ClusterMigrationsDDL = clusterMigrationsDDL
