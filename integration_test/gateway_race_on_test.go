//go:build race

package integration_test

// gatewayRaceDetector reports a build with the race detector, which makes
// TestIntegrationGateway run gatewayAccountsSmall accounts.
const gatewayRaceDetector = true
