"""adaclip_rl.gradclip"""
