"""adaclip_rl.rewards"""
